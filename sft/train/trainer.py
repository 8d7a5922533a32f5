"""Train: TRL's SFTTrainer, given our settings as an SFTConfig, with two measured changes; DPO's and GRPO's configs.

- Off CUDA, the language-model head is applied only at labelled positions (label_only_loss.py): 1.57x to
  1.67x per step on a 2-core CPU, with the same loss, gradients and logged metrics.
- DPO: off CUDA, each answer token's log-probability is also computed at labelled positions only, for the
  reference model and for a frozen head (label_only_loss.add_label_only_head).
- Length-grouped batches drawn from (seed, epoch) alone, so that a resumed run sees the batches the
  interrupted one would have: transformers' own sampler draws from the global random state, which a
  resume restores as it was mid-epoch, not at the epoch's start (a resumed run then ended elsewhere).
"""

import torch
import trl
from transformers import PrinterCallback, ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from sft import distributed
from sft.train.callbacks import LogLines
from sft.train.label_only_loss import add_label_only_head, causal_lm, label_only_logits_possible, labelled_tokens_loss

DATALOADER_WORKERS_ON_GPU = 2  # processes that collate batches while a GPU trains (none on a CPU)


def training_arguments(settings, run, evaluate: bool) -> dict:
    """Our settings as the Trainer's arguments, shared by SFT and DPO; `evaluate`: there is held-out data."""
    on_gpu = run.device.kind == "cuda"
    # On a GPU, worker processes pad the next batches while the GPU computes (about 3 ms per batch of 16
    # long chats on a CPU core); on a CPU they would take cores from training.
    loader_workers = min(DATALOADER_WORKERS_ON_GPU, distributed.cores_per_process()) if on_gpu else 0
    return dict(
        output_dir=str(run.checkpoints),
        num_train_epochs=settings.num_epochs,
        max_steps=settings.max_steps if settings.max_steps > 0 else -1,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        max_length=settings.max_length,
        activation_checkpointing=settings.gradient_checkpointing,  # transformers' new name for it
        use_cpu=run.device.kind == "cpu",  # several processes without a GPU form a CPU (gloo) group only when asked
        bf16=run.device.precision == "bf16",
        tf32=True if on_gpu and run.device.precision == "bf16" else None,  # fp32 matmuls outside autocast: TF32
        fp16=run.device.precision == "fp16",
        dataloader_num_workers=loader_workers,
        dataloader_persistent_workers=loader_workers > 0,  # not started again for every epoch and evaluation
        ddp_find_unused_parameters=False,  # every weight of a causal LM takes part in each step: skip the search
        log_level_replica="error",  # the other processes' library warnings repeat the main one's
        logging_steps=settings.logging_steps,
        # Evaluate before training (the starting model's score), at the end of each epoch, and at the end.
        eval_strategy=("steps" if settings.max_steps > 0 else "epoch") if evaluate else "no",
        eval_steps=settings.max_steps if settings.max_steps > 0 else None,
        eval_on_start=evaluate and run.resume_from is None,  # a resumed run has its score already
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        report_to=settings.report_to,
        disable_tqdm=False,  # keep the progress bar with ETA even though library logging is quieted
        include_num_input_tokens_seen="non_padding",
        seed=settings.seed,
        data_seed=settings.seed,
    )


def sft_config(settings, run, evaluate: bool) -> trl.SFTConfig:
    """Our settings in TRL's terms, for the device the run picked; `evaluate`: there are held-out chats."""
    return trl.SFTConfig(
        **training_arguments(settings, run, evaluate),
        dataset_kwargs={"skip_prepare_dataset": True},  # masking.py has cut, labelled and filtered the chats
        prediction_loss_only=True,  # evaluation needs the loss alone: no logits kept (see prediction_step)
        train_sampling_strategy="group_by_length",  # chats of similar length together: less padding
    )


def dpo_config(settings, run, evaluate: bool) -> trl.DPOConfig:
    """DPO's settings in TRL's terms: the same arguments, plus beta (TRL's DPO loss, "sigmoid", is the paper's)."""
    return trl.DPOConfig(**training_arguments(settings, run, evaluate), beta=settings.beta,
                         trust_remote_code=settings.trust_remote_code)  # TRL loads the reference itself


def grpo_config(settings, run) -> trl.GRPOConfig:
    """GRPO's settings in TRL's terms: the same arguments (no max_length: prompts are kept whole, answers capped at
    max_completion_length), the group size, sampling, the KL coefficient beta, and the rewards' weights."""
    arguments = training_arguments(settings, run, evaluate=False)  # held-out prompts are scored by the script
    del arguments["max_length"]
    return trl.GRPOConfig(**arguments, num_generations=settings.num_generations,
                          max_completion_length=settings.max_completion_length, temperature=settings.temperature,
                          beta=settings.beta, reward_weights=[1.0, settings.clean_stop_reward],
                          trust_remote_code=settings.trust_remote_code)


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches in an order drawn from (seed, epoch) alone. The epoch is read from the Trainer's
    state as each pass begins: after a resume under several processes, the Trainer's set_epoch() does not reach
    a sampler inside accelerate's skip_first_batches wrappers (the resumed epoch drew epoch 0's order)."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int, trainer):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.trainer = seed, trainer

    def __iter__(self):
        epoch = int(self.trainer.state.epoch or 0)  # whole at the start of a pass; after a resume, mid-pass
        self.generator = torch.Generator().manual_seed(self.seed + epoch)
        return super().__iter__()


class SFTTrainer(trl.SFTTrainer):
    """trl.SFTTrainer with the label-only head off CUDA and seeded length-grouped batches (see above)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_our_log_lines(self)

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in dataset["input_ids"]]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthGroupedSampler(batch, lengths, self.args.data_seed or self.args.seed, self)

    def uses_label_only_head(self, model, inputs) -> bool:
        """Off CUDA, in one process (DDP must see the forward pass to sync gradients), for a model it fits."""
        return ("labels" in inputs and self.accelerator.device.type != "cuda" and self.accelerator.num_processes == 1
                and label_only_logits_possible(causal_lm(self.accelerator.unwrap_model(model))))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self.uses_label_only_head(model, inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        unwrapped = causal_lm(self.accelerator.unwrap_model(model))
        with self.accelerator.autocast():  # bf16 mixed precision: accelerate wraps only model.forward, not called here
            loss_sum, entropy, correct, labelled = labelled_tokens_loss(unwrapped, inputs)
        num_tokens = labelled if num_items_in_batch is None else num_items_in_batch
        loss = loss_sum / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self.log_metrics_like_trl(inputs, labelled, entropy, correct)
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation's loss through the label-only head too: the Trainer's own step asks compute_loss for the
        logits, which scores the whole vocabulary at every position."""
        inputs = self._prepare_inputs(inputs)
        if not prediction_loss_only or not self.uses_label_only_head(model, inputs):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)  # the mean over this batch's labelled tokens, as before
        return loss.detach(), None, None

    @torch.no_grad()
    def log_metrics_like_trl(self, inputs, labelled, entropy, correct) -> None:
        """The metrics SFTTrainer.compute_loss logs (entropy, token accuracy, tokens seen), on the same positions."""
        mode = "train" if self.model.training else "eval"
        valid = self.accelerator.gather_for_metrics(labelled).sum()
        entropy = self.accelerator.gather_for_metrics(entropy).sum()
        correct = self.accelerator.gather_for_metrics(correct).sum()
        self._metrics[mode]["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            seen = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_ids"].numel()
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(torch.as_tensor(seen)).sum())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]


class DPOTrainer(trl.DPOTrainer):
    """trl.DPOTrainer with the label-only head off CUDA, printing our log lines (with DPO's rewards)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_our_log_lines(self)
        if self.accelerator.device.type != "cuda":  # TRL's head scores every position there, prompts and padding too
            for model in (m for m in (self.model, self.ref_model) if m is not None):  # LoRA: no reference copy
                model = causal_lm(self.accelerator.unwrap_model(model))
                if label_only_logits_possible(model):
                    add_label_only_head(model, self.accelerator.autocast)


class GRPOTrainer(trl.GRPOTrainer):
    """trl.GRPOTrainer, printing our log lines (with GRPO's rewards and KL) instead of the Trainer's dicts."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_our_log_lines(self)


def use_our_log_lines(trainer) -> None:
    """With LogLines among the callbacks, remove the Trainer's own printers (LogLines keeps the progress bar)."""
    callbacks = trainer.callback_handler.callbacks
    if any(isinstance(c, LogLines) for c in callbacks):
        for callback in [c for c in callbacks if type(c) in (ProgressCallback, PrinterCallback)]:
            trainer.remove_callback(callback)


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
