"""What makes training fast, kept only where bench/benchmark.py measured that it helps (BENCHMARKS.md).

- No compute on padding: every batch is padded to its own longest chat (TRL's collator), never to
  MAX_LENGTH, and chats of similar length are batched together (transformers' LengthGroupedSampler,
  here drawn from the seed and the epoch, so that a resumed run sees the same batches).
- No dropout by default (DROPOUT = 0.0, as Llama, Gemma and Qwen are trained; models.load_model):
  GPT-2's 0.1 attention dropout draws a random mask over every attention matrix and keeps PyTorch
  from its fused attention kernel.
- Language-model head only where a label is (CPU and MPS): the head turns every position into scores
  over the whole vocabulary (50k words for GPT-2, 262k for Gemma), but only the positions followed by
  a trained token need them. On CUDA, TRL's fused head already does this with its Triton kernel.
"""

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import SFTTrainer

# Above this many logits (2**27 floats = 512 MB per copy), score with TRL's chunked head instead,
# which never holds them all at once.
MAX_LABEL_LOGITS = 2**27

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
        if int(mask.sum()) * unwrapped.get_output_embeddings().weight.shape[0] > MAX_LABEL_LOGITS:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        backbone_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        hidden = unwrapped.base_model(**backbone_inputs, use_cache=False).last_hidden_state[:, :-1]
        logits = unwrapped.get_output_embeddings()(hidden[mask]).float()
        wanted = targets[mask]
        log_probs = torch.log_softmax(logits, dim=-1)
        token_log_probs = log_probs.gather(-1, wanted.unsqueeze(-1)).squeeze(-1)
        num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -token_log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes

        with torch.no_grad():  # the metrics SFTTrainer logs, on the same positions
            mode = "train" if self.model.training else "eval"
            valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
            entropy = self.accelerator.gather_for_metrics(-(log_probs.exp() * log_probs).sum()).sum()
            correct = self.accelerator.gather_for_metrics((logits.argmax(-1) == wanted).sum()).sum()
            self._metrics[mode]["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
            self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
            if mode == "train":
                seen = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_ids"].numel()
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(torch.as_tensor(seen)).sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
