"""What makes training fast, kept only where bench/benchmark.py measured that it helps (BENCHMARKS.md).

- No compute on padding: every batch is padded to its own longest chat (TRL's collator), never to
  MAX_LENGTH, and chats of similar length are batched together (transformers' LengthGroupedSampler,
  here drawn from the seed and the epoch, so that a resumed run sees the same batches).
- No dropout by default (DROPOUT = 0.0, as Llama, Gemma and Qwen are trained; models.load_model):
  GPT-2's 0.1 attention dropout draws a random mask over every attention matrix and keeps PyTorch
  from its fused attention kernel.
- GPT-2's GELU from PyTorch's fused kernel (models.load_model): "gelu_new" is the same function written
  out as six tensor operations, each a pass over the MLP's largest activations.
- Language-model head only where a label is (CPU and MPS): the head turns every position into scores
  over the whole vocabulary (50k words for GPT-2, 262k for Gemma), but only the positions followed by
  a trained token need them, and they are scored a chunk at a time (LabelledTokensLoss) so memory
  stays flat. On CUDA, TRL's fused head already does this with its Triton kernel.
- Tokenized chats cached on disk (masking.tokenize_chats): a rerun on the same chats skips tokenizing.
- On CUDA, dataloader workers pad the next batches while the GPU computes (train.make_sft_config);
  fused AdamW is transformers' default optimizer with this torch.

Off by default, with what they gave in BENCHMARKS.md: --compile (compile_blocks) and
--gradient-checkpointing.
"""

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import SFTTrainer

# Logits are scored this many at a time (2**25 floats = 128 MB): memory stays flat for any number of
# labelled tokens and any vocabulary.
CHUNK_LOGITS = 2**25

_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


def causal_lm(model):
    """The transformers model itself, also when PEFT has wrapped it with LoRA adapters."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def label_only_logits_possible(model) -> bool:
    """Whether the plain head (hidden states x output embeddings) gives the model's logits: no softcap or scale."""
    text_config = model.config.get_text_config()
    return (model.get_output_embeddings() is not None
            and all(getattr(text_config, name, None) in (None, 1.0) for name in _LOGIT_TRANSFORMS))


def compile_blocks(model) -> tuple[int, str] | None:
    """torch.compile every block of the model's layer stack, in place; returns (how many, block class).

    Per block rather than the whole model: the blocks share their code, so one compilation serves all
    of them, and the model stays the same object, so the label-only head (which calls the layer stack
    directly), saving and LoRA see no wrapper. Compiling happens at the first forward pass, and again
    once when the batch length first changes (then for any length)."""
    for module in model.modules():
        if (isinstance(module, torch.nn.ModuleList) and len(module) > 1
                and len({type(block) for block in module}) == 1):
            for block in module:
                block.compile()
            return len(module), type(module[0]).__name__
    return None


class LabelledTokensLoss(torch.autograd.Function):
    """Cross-entropy summed over the labelled positions only, with the output head applied chunk by chunk.

    Forward scores a chunk of rows (hidden states x output embeddings), takes its log-softmax, and at
    once works out the chunk's gradients (softmax minus one-hot, times the head or the hidden states),
    so no chunk's logits outlive it; backward only scales those gradients. Same three matrix
    multiplies as autograd would do, a fraction of the memory. Also returns the summed entropy and the
    number of correct argmax predictions, the metrics SFTTrainer logs.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, with_gradients: bool):
        rows_per_chunk = max(1, CHUNK_LOGITS // weight.shape[0])
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        entropy, correct = torch.zeros_like(loss), torch.zeros_like(loss)
        # Only what backward will need: none in evaluation, no head gradient when it is frozen (LoRA).
        grad_hidden = torch.empty_like(hidden) if with_gradients and ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if with_gradients and ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], rows_per_chunk):
            rows, wanted = hidden[start:start + rows_per_chunk], targets[start:start + rows_per_chunk]
            log_probs = torch.log_softmax((rows @ weight.T).float(), dim=-1)
            picked = torch.arange(len(wanted), device=wanted.device)
            loss -= log_probs[picked, wanted].sum()
            probs = log_probs.exp()
            entropy -= (probs * log_probs).sum()
            correct += (log_probs.argmax(-1) == wanted).sum()
            probs[picked, wanted] -= 1  # d(-log p[target]) / d(logits)
            probs = probs.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + rows_per_chunk] = probs @ weight
            if grad_weight is not None:
                grad_weight.addmm_(probs.T, rows)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(entropy, correct)
        return loss, entropy, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_entropy, _grad_correct):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_loss if grad_hidden is not None else None,
                grad_weight * grad_loss if grad_weight is not None else None, None, None)


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches in an order drawn from (seed, epoch) alone: a resumed run, which skips the
    batches it has already trained on, sees the same order as the interrupted one."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls this at the start of every epoch
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class FastSFTTrainer(SFTTrainer):
    """SFTTrainer with seeded length-grouped batches and, off CUDA, the LM head only at labelled positions.

    Same loss, gradients and logged metrics (token accuracy, entropy, tokens) as SFTTrainer's; tested
    in tests/test_speed.py.
    """

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in dataset["input_ids"]]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthGroupedSampler(batch, lengths, self.args.data_seed or self.args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        unwrapped = causal_lm(self.accelerator.unwrap_model(model))
        # Several processes: the forward pass must go through DDP's wrapper, which syncs the gradients.
        if (return_outputs or labels is None or self.accelerator.device.type == "cuda"
                or self.accelerator.num_processes > 1 or not label_only_logits_possible(unwrapped)):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        targets = labels[:, 1:]
        mask = targets != -100  # position t predicts token t+1
        backbone_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        hidden = unwrapped.base_model(**backbone_inputs, use_cache=False).last_hidden_state[:, :-1]
        wanted = targets[mask]
        loss_sum, entropy, correct = LabelledTokensLoss.apply(
            hidden[mask], unwrapped.get_output_embeddings().weight, wanted, torch.is_grad_enabled())
        num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = loss_sum / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes

        with torch.no_grad():  # the metrics SFTTrainer logs, on the same positions
            mode = "train" if self.model.training else "eval"
            valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
            entropy = self.accelerator.gather_for_metrics(entropy).sum()
            correct = self.accelerator.gather_for_metrics(correct).sum()
            self._metrics[mode]["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
            self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
            if mode == "train":
                seen = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_ids"].numel()
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(torch.as_tensor(seen)).sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
