"""Train: wire a TrainConfig to TRL's SFTTrainer, with honest numbers in every log line.

The steps, in order: find the base model -> load the tokenizer and give it the chat template ->
load and sample the chats -> tokenize with the trained-token mask -> fine-tune -> save the folder.
"""

import dataclasses
import datetime
import functools
import importlib.metadata
import math
import contextlib
import signal
import sys
import time
from pathlib import Path

from . import chat_format, data, distributed, masking, models, offline_kit, save
from .config import TrainConfig
from .errors import Interrupted, UserError, first_line
from .metadata import TrainingMetadata

RULE = "=" * 78
DATALOADER_WORKERS_ON_GPU = 2  # processes that collate batches while a GPU trains (none on a CPU)


def banner(text: str) -> None:
    print(f"\n{RULE}\n{text}\n{RULE}", flush=True)


def quiet_library_chatter() -> None:
    """Hide progress bars and warnings that say nothing a learner can act on."""
    import logging
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()  # tokenized data is small; our own lines say what happened
    transformers.logging.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its optional CPU kernel download, when installed
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated")
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator")
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*Conv1D")  # PEFT handles GPT-2's Conv1D itself
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated")


def pick_device():
    """(device, precision): CUDA with bf16 where supported (else fp16), Apple MPS, or the CPU in fp32."""
    import torch

    device = models.best_device()
    processes = distributed.num_processes()
    if device == "cuda":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        per_gpu = f", {processes} processes" if processes > 1 else ""
        return f"cuda ({torch.cuda.get_device_name(0)}{per_gpu})", precision
    if device == "mps":
        return "mps", "fp32"  # autocast on MPS is not reliable for training yet
    threads = f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}"
    return f"cpu ({f'{processes} processes x ' if processes > 1 else ''}{threads})", "fp32"


def log_line(state, logs: dict, timer: dict) -> str | None:
    """One line per logging interval: step, epoch, loss, lr, tokens/s, step time; and eval results."""
    if "eval_loss" in logs:
        line = (f"eval  | step {state.global_step:>5} | eval loss {logs['eval_loss']:.4f}"
                f" | token accuracy {logs.get('eval_mean_token_accuracy', float('nan')):.1%}")
    elif "loss" in logs:
        now, tokens = time.time(), logs.get("num_tokens", 0)
        seconds = max(now - timer["time"], 1e-9)
        steps = max(state.global_step - timer["step"], 1)
        line = (f"step {state.global_step:>5}/{state.max_steps} | epoch {logs.get('epoch', 0):.2f}"
                f" | loss {logs['loss']:.4f} | lr {logs.get('learning_rate', 0):.2e}"
                f" | {(tokens - timer['tokens']) / seconds:,.0f} tok/s | {seconds / steps:.2f} s/step")
        timer.update(time=now, tokens=tokens, step=state.global_step)
    else:
        return None
    return line


def estimate_cpu_time(trainer, total_tokens: int, processes: int) -> str:
    """Time one forward+backward pass on a real batch and scale it to the whole run (shared by the processes)."""
    import torch

    model = trainer.model
    rows = min(len(trainer.train_dataset), trainer.args.per_device_train_batch_size)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(rows)])
    seconds = []
    for _ in range(2):  # the first pass pays one-off start-up costs
        started = time.time()
        model(**batch).loss.backward()
        seconds.append(time.time() - started)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(trainer.args.seed)
    tokens_per_second = int(batch["attention_mask"].sum()) / seconds[-1] * processes
    minutes = total_tokens / tokens_per_second / 60
    return (f"about {minutes:,.0f} min of training ({tokens_per_second:,.0f} tokens/s measured on one batch)"
            if minutes >= 1 else f"under a minute of training ({tokens_per_second:,.0f} tokens/s)")


class CtrlC:
    """While active, the first Ctrl-C only sets `requested` (training then checkpoints and stops after the
    current step); a second one stops at once, and the newest complete checkpoint still resumes."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again stops at once)...",
              file=sys.stderr, flush=True)


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


@contextlib.contextmanager
def training_errors_explained(config: TrainConfig, device: str, checkpoints: Path):
    """Out of memory, a full disk and a failed --compile: the ways a good setup still fails, as advice."""
    try:
        yield
    except Exception as error:
        if config.compile and type(error).__module__.startswith(("torch._dynamo", "torch._inductor")):
            raise UserError(f"--compile: torch.compile failed on {device}: {first_line(error)}. Run without "
                            "--compile (on a CPU, torch.compile needs a working C++ compiler: gcc or clang)") from None
        if isinstance(error, (RuntimeError, MemoryError)) and is_out_of_memory(error):
            batch, accumulate = config.batch_size, config.gradient_accumulation_steps
            smaller = (batch // 2, accumulate * 2) if batch % 2 == 0 else (1, accumulate * batch)
            advice = [f"--batch-size {smaller[0]} --gradient-accumulation-steps {smaller[1]} (the same effective "
                      f"batch of {config.effective_batch_size})" if batch > 1 else None,
                      f"--max-length {config.max_length // 2}",
                      "--gradient-checkpointing" if not config.gradient_checkpointing else None]
            raise UserError(f"out of memory on {device} with --batch-size {config.batch_size}, "
                            f"--gradient-accumulation-steps {config.gradient_accumulation_steps}, --max-length "
                            f"{config.max_length}. Try " + ", or ".join(a for a in advice if a) + ".") from None
        if isinstance(error, OSError):
            raise UserError(f"could not write a checkpoint to {checkpoints}: {error.strerror or first_line(error)} "
                            "(is the disk full?). Free some space and run the same command again: it resumes "
                            "from the newest complete checkpoint.") from None
        raise


def prepare_reporting(config: TrainConfig, output_dir: Path) -> Path | None:
    """Check that the chosen logger is installed; TensorBoard logs go to ./runs/NAME beside OUTPUT_DIR."""
    import importlib.util
    import os

    if config.report_to == "none":
        return None
    package = "tensorboard" if config.report_to == "tensorboard" else "wandb"
    if importlib.util.find_spec(package) is None:
        raise UserError(f"--report-to {config.report_to} needs the {package} package: pip install {package}")
    if config.report_to != "tensorboard":
        return None
    runs = output_dir.parent / "runs" / output_dir.name
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(runs)  # where transformers' TensorBoard callback writes
    return runs


def linear_layer_names(model) -> set[str]:
    """The short names of the layers LoRA can adapt: linear ones, GPT-2's Conv1D and 4-bit ones included."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) or type(module).__name__ == "Linear4bit"}


def lora_config(config: TrainConfig, model):
    """PEFT's LoRA settings. By default adapters go on every linear layer ("all-linear": GPT-2's fused
    c_attn/c_proj/c_fc, the q/k/v/o and MLP projections of Llama, Gemma, GPT-NeoX), which PEFT finds
    itself for any architecture; named layers are checked against the model first."""
    if not config.uses_lora:
        return None
    from peft import LoraConfig

    targets = config.lora_target_modules.strip()
    if targets != "all-linear":
        targets, layers = [name.strip() for name in targets.split(",") if name.strip()], linear_layer_names(model)
        unknown = sorted(set(targets) - layers)
        if unknown:
            raise UserError(f"--lora-target-modules {', '.join(unknown)}: no such linear layer in "
                            f"{config.base_model}; its linear layers are {', '.join(sorted(layers))} "
                            "(or use all-linear)")
    return LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def lora_summary(model, config: TrainConfig) -> dict | None:
    if not config.uses_lora:
        return None
    targets = sorted({name.split(".")[-1] for name in model.peft_config["default"].target_modules})
    return {"rank": config.lora_rank, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "target_modules": targets,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "base_weights": "4-bit NF4 while training (QLoRA, bitsandbytes)" if config.qlora else "as loaded",
            "saved": ("merged into the unquantized base" if config.qlora else "merged into the weights")
                     + " saved in this folder; the adapter alone in adapter/"}


def make_sft_config(config: TrainConfig, checkpoints: Path, device: str, precision: str, has_eval: bool,
                    resuming: bool):
    """Our settings in TRL's terms, for a device and precision from pick_device()."""
    from trl import SFTConfig

    # On a GPU, worker processes pad the next batches while the GPU computes (about 3 ms per batch of 16
    # long chats on a CPU core); on a CPU they would take cores from training.
    on_gpu = device.startswith("cuda")
    loader_workers = min(DATALOADER_WORKERS_ON_GPU, distributed.cores_per_process()) if on_gpu else 0
    return SFTConfig(
        use_cpu=device.startswith("cpu"),  # several processes without a GPU form a CPU (gloo) group only when asked
        dataloader_num_workers=loader_workers,
        dataloader_persistent_workers=loader_workers > 0,  # not started again for every epoch and evaluation
        ddp_find_unused_parameters=False,  # every weight of a causal LM takes part in each step: skip the search
        log_level_replica="error",  # the other processes' library warnings repeat the main one's
        output_dir=str(checkpoints),
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        activation_checkpointing=config.gradient_checkpointing,  # transformers' new name for it
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        max_length=config.max_length,
        train_sampling_strategy="group_by_length",  # chats of similar length together: less padding
        bf16=precision == "bf16",
        tf32=True if precision == "bf16" else None,  # Ampere or newer: fp32 matmuls outside autocast use TF32
        fp16=precision == "fp16",
        logging_steps=config.logging_steps,
        # Evaluate before training (the base model's score), at the end of each epoch, and at the end.
        eval_strategy=("steps" if config.max_steps > 0 else "epoch") if has_eval else "no",
        eval_steps=config.max_steps if config.max_steps > 0 else None,
        eval_on_start=has_eval and not resuming,  # a resumed run has its score already
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to=config.report_to,
        disable_tqdm=False,  # keep the progress bar with ETA even though library logging is quieted
        include_num_input_tokens_seen="non_padding",
        seed=config.seed,
        data_seed=config.seed,
    )


def base_model_name(config: TrainConfig, source) -> str:
    return offline_kit.BASE_MODEL_ID if source.kind == "offline-kit" else config.base_model


def run_training(config: TrainConfig) -> Path:
    """Fine-tune config.base_model on config.dataset_name and write config.output_dir. Returns its path."""
    started = time.time()
    quiet_library_chatter()
    import torch
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback, set_seed

    from .speed import FastSFTTrainer, compile_blocks

    output_dir = Path(config.output_dir)
    settings = dataclasses.asdict(config)
    processes, main_process = distributed.num_processes(), distributed.is_main_process()
    sharding = distributed.sharded()  # "FSDP" or "DeepSpeed" from the accelerate config, else None
    device, precision = pick_device()
    if config.qlora and (reason := models.qlora_unavailable(device)):
        raise UserError(reason)
    if config.uses_lora and sharding:
        raise UserError(f"{'--qlora' if config.qlora else '--lora'} under {sharding} is not supported "
                        "here: LoRA's adapters are small enough to copy to every GPU, so launch with configs/ddp.yaml "
                        "instead")
    save.check_output_dir(output_dir, settings, config.overwrite)
    resume_from = save.find_resume_checkpoint(output_dir, settings, config.resume, config.overwrite)
    tensorboard_dir = prepare_reporting(config, output_dir)
    set_seed(config.seed)

    # 1. Base model and tokenizer, with our chat template
    source = models.resolve_base_model(config.base_model, config.offline)
    if source.notice:
        banner("OFFLINE: " + source.notice)
    tokenizer = models.load_tokenizer(source, config.trust_remote_code)
    chat_format.install_chat_template(tokenizer)

    # 2. Chats: load, sample, hold out an eval split
    chats = data.load_chat_data(config.dataset_name, config.dataset_split, config.num_train_samples,
                                config.eval_fraction, config.seed, config.offline, models.hub_available)
    for notice in chats.notices:
        banner(("OFFLINE: " if chats.source == "offline-kit" else "NOTE: ") + notice)

    # 3. Tokenize with the trained-token mask, cutting long chats at a turn boundary
    # Kept on disk: a rerun on the same chats, tokenizer and max_length loads them instead.
    tokenized = functools.partial(masking.tokenize_chats, tokenizer, max_length=config.max_length,
                                  cache_dir=offline_kit.cache_dir() / "tokenized")
    train_set, train_stats = tokenized(chats.train)
    eval_set, eval_stats = tokenized(chats.eval)
    if train_set is None:
        raise UserError(f"no training conversation fits --max-length {config.max_length} "
                        f"(all {len(chats.train)} were dropped): raise --max-length")
    print(f"\nData: {chats.name} [{chats.format}, from {chats.source}]: {len(train_set)} training and "
          f"{len(eval_set) if eval_set else 0} held-out conversations.")
    print(f"  {train_stats['tokens']:,} tokens, of which {train_stats['trained_tokens']:,} are trained "
          f"({train_stats['trained_tokens'] / train_stats['tokens']:.0%}: the assistant's answers)"
          + (", tokenized by an earlier run (cached)." if train_stats["cached"] else "."))
    dropped = train_stats["dropped"] + eval_stats["dropped"]
    if dropped or train_stats["truncated"]:
        print(f"  max_length {config.max_length}: {dropped} conversations dropped (first answer too long), "
              f"{train_stats['truncated'] + eval_stats['truncated']} cut after their last whole answer.")
    first = train_set[0]
    print("\nFirst training example (highlighted = trained tokens; the rest only gives context):\n")
    print(masking.show_trained_tokens(tokenizer, first["input_ids"], first["assistant_masks"],
                                      color=sys.stdout.isatty()))

    # 4. Model and device
    # Weights in fp32 (mixed precision computes in bf16/fp16); with QLoRA, linear layers in 4 bits, the rest
    # in the compute precision, as in the QLoRA paper.
    load_base = functools.partial(models.load_model, source, trust_remote_code=config.trust_remote_code,
                                  dropout=config.dropout)
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model = (load_base(dtype=compute_dtype, quantization=models.four_bit_config(compute_dtype)) if config.qlora
             else load_base(dtype=torch.float32))
    window = models.context_window(model)
    if window and config.max_length > window:
        raise UserError(f"--max-length {config.max_length} is longer than {config.base_model}'s context window "
                        f"({window} tokens): use --max-length {window} or less")
    parameters = model.num_parameters()  # 4-bit weights count once each, not as packed bytes
    print(f"\nModel: {base_model_name(config, source)} [{source.kind}], {parameters / 1e6:.1f}M parameters, "
          f"on {device}, {precision}.")
    if device.startswith("cpu"):
        print("No GPU found: training on the CPU. It works, but slowly; a CUDA GPU is 10-100x faster.")

    peft_config = lora_config(config, model)

    # 5. Train with TRL's SFTTrainer
    finished = False
    try:
        checkpoints = (save.start_checkpoints(output_dir, settings, resuming=resume_from is not None)
                       if main_process else save.checkpoints_dir(output_dir))
        args = make_sft_config(config, checkpoints, device, precision, has_eval=eval_set is not None,
                               resuming=resume_from is not None)
        trainer = FastSFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                                 processing_class=tokenizer, peft_config=peft_config)
        lora = lora_summary(trainer.model, config)
        if lora:
            trainable = lora["trainable_parameters"]
            print(f"{'QLoRA (4-bit base)' if config.qlora else 'LoRA'}: rank {lora['rank']}, alpha {lora['alpha']}, "
                  f"on {', '.join(lora['target_modules'])}: {trainable / 1e6:.2f}M trainable parameters "
                  f"({trainable / parameters:.2%} of the model).")
        timer = {"time": time.time(), "tokens": 0, "step": 0}

        class LogLines(ProgressCallback):  # the progress bar with ETA, and our log line instead of a raw dict
            def on_log(self, args, state, control, logs=None, **kwargs):
                line = log_line(state, logs or {}, timer) if state.is_world_process_zero else None
                if line:
                    (self.training_bar.write if self.training_bar is not None else print)(line)

        class StartClock(TrainerCallback):  # after a resume, the state holds the steps and tokens done before
            def on_train_begin(self, args, state, control, **kwargs):
                timer.update(time=time.time(), tokens=state.num_input_tokens_seen, step=state.global_step)
                timer["start_tokens"] = state.num_input_tokens_seen

        ctrl_c = CtrlC()

        class Checkpoints(TrainerCallback):  # on Ctrl-C: save and stop; at the end: none, the model is saved next
            def on_step_end(self, args, state, control, **kwargs):
                if ctrl_c.requested:
                    control.should_save, control.should_evaluate, control.should_training_stop = True, False, True
                elif state.global_step >= state.max_steps:
                    control.should_save = False

            def on_epoch_end(self, args, state, control, **kwargs):
                if ctrl_c.requested:
                    control.should_evaluate = False

        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        for callback in (LogLines, StartClock, Checkpoints):
            trainer.add_callback(callback)

        # Each process takes every n-th batch; the last ones are topped up so that all take the same number.
        batches_per_epoch = math.ceil(math.ceil(len(train_set) / config.batch_size) / processes)
        steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
        total_steps = config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.num_epochs)
        if device.startswith("cpu") and resume_from is None:
            epochs = total_steps / steps_per_epoch
            estimate = estimate_cpu_time(trainer, int(train_stats["tokens"] * epochs), processes)
            print(f"Estimated time on this CPU: {estimate}.")
        if resume_from is not None:
            print(f"\nResuming from {resume_from} (pass --no-resume to start over).")
        if config.compile:  # after the CPU estimate, which would otherwise time the compiling
            compiled = compile_blocks(trainer.model)
            print(f"torch.compile: {compiled[0]} {compiled[1]} blocks, compiled during the first steps."
                  if compiled else "torch.compile: this model has no stack of identical blocks; --compile ignored.")
        global_batch = config.effective_batch_size * processes
        on_processes = f" x {processes} processes" if processes > 1 else ""
        print(f"\nTraining: {total_steps} optimizer steps of {global_batch} conversations ({config.batch_size} x "
              f"{config.gradient_accumulation_steps} accumulated{on_processes}), lr {config.learning_rate:g}, "
              f"max_length {config.max_length}.\n", flush=True)

        train_started = time.time()
        # Under a launcher, Ctrl-C reaches every process at a different step: there it stops at once.
        with ctrl_c if processes == 1 else contextlib.nullcontext(), \
                training_errors_explained(config, device, checkpoints):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_seconds = time.time() - train_started
        if ctrl_c.requested:
            raise Interrupted(f"Interrupted at step {trainer.state.global_step}/{trainer.state.max_steps}; "
                              f"checkpoint saved in {save.newest_checkpoint(checkpoints)}.\n"
                              "Run the same command again to continue from there (--no-resume starts over).")

        # 6. Save
        history = trainer.state.log_history
        evals = [e["eval_loss"] for e in history if "eval_loss" in e]
        tokens_processed = int(trainer.state.num_input_tokens_seen)
        session_tokens = tokens_processed - int(timer.get("start_tokens", 0))
        versions = {name: importlib.metadata.version(name)
                    for name in ("torch", "transformers", "trl", "datasets", "accelerate", "peft")}
        metadata = TrainingMetadata(
            base_model=base_model_name(config, source),
            dataset=chats.name,
            num_samples=len(train_set),
            num_epochs=config.num_epochs,
            learning_rate=config.learning_rate,
            model_parameters=parameters,
            base_model_source=source.kind,
            base_model_path=source.path,
            dataset_source=chats.source,
            dataset_split=chats.split,
            dataset_format=chats.format,
            num_eval_samples=len(eval_set) if eval_set else 0,
            conversations_dropped=dropped,
            conversations_truncated=train_stats["truncated"] + eval_stats["truncated"],
            max_length=config.max_length,
            batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            effective_batch_size=global_batch,
            num_processes=processes,
            max_steps=config.max_steps,
            seed=config.seed,
            lora=lora,
            optimizer_steps=trainer.state.global_step,
            epochs_completed=round(trainer.state.epoch or 0, 4),
            final_train_loss=next((e["loss"] for e in reversed(history) if "loss" in e), None),
            eval_loss_before=evals[0] if evals else None,
            eval_loss=evals[-1] if len(evals) > 1 else None,
            trained_tokens_per_epoch=train_stats["trained_tokens"],
            tokens_processed=tokens_processed,
            resumed_from_step=int(resume_from.name.removeprefix("checkpoint-")) if resume_from else None,
            train_seconds=round(train_seconds, 2),
            tokens_per_second=round(session_tokens / train_seconds, 1) if train_seconds else 0.0,
            total_seconds=0.0,  # filled just before writing
            device=device,
            precision=precision,
            library_versions=versions,
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            settings=settings,
        )
        metadata.total_seconds = round(time.time() - started, 2)
        # Sharded weights are gathered by every process together; the main process writes them.
        state_dict = trainer.accelerator.get_state_dict(trainer.model) if sharding else None
        if main_process:
            save.write_model_folder(output_dir, trainer, tokenizer, metadata, state_dict,
                                    full_precision_base=functools.partial(load_base, dtype=torch.float32)
                                    if config.qlora else None)
        finished = True
    finally:  # keep checkpoints only if the run stopped early and one can be resumed
        if main_process:
            save.discard_checkpoints(output_dir, keep_resumable=not finished)

    before = f"{metadata.eval_loss_before:.3f}" if metadata.eval_loss_before is not None else "n/a"
    after = f"{metadata.eval_loss:.3f}" if metadata.eval_loss is not None else "n/a"
    banner(f"Done in {metadata.total_seconds / 60:.1f} min. Held-out loss: {before} (base) -> {after} "
           f"(fine-tuned).\nModel saved to {output_dir}/ with training_metadata.json and loss_curve.png.\n"
           f"Compare with the base model:  python test_chatbot.py --mode compare --model {output_dir}"
           + (f"\nTensorBoard:  tensorboard --logdir {tensorboard_dir.parent}" if tensorboard_dir else ""))
    return output_dir


def main_from_constants(constants: dict, description: str, argv=None) -> None:
    """Entry point shared by the three training scripts: CONSTANTS -> flags -> run."""
    from .config import parse_config
    from .errors import exit_on_user_error

    def main():
        with distributed.main_process_prints():
            run_training(parse_config(constants, argv, description))

    exit_on_user_error(main)()

