"""One training run, around the recipe: the checks before any work, and what happens when it ends.

    with Run(settings) as run:   # OUTPUT_DIR locked for this run; settings and folders checked
        ...                      # the recipe (train_chatbot.py)
    # on the way out: checkpoints removed, unless the run stopped early and can resume from one

Just before training it checks the disk and the memory the run will need and prints what a learner
should know (LoRA's size, the CPU time estimate); it turns the failures a good setup can still meet
into advice, and prints the closing summary.
"""

import contextlib
import time
from pathlib import Path

from sft import distributed
from sft.console import banner, quiet_library_chatter
from sft.devices import pick_device
from sft.errors import UserError, first_line
from sft.models import stay_offline
from sft.train import checkpoints, estimates, preflight
from sft.train.lora import base_parameters, lora_summary


class Run:
    def __init__(self, settings):
        self.settings = settings
        self.output_dir = Path(settings.output_dir)
        self.started = time.time()
        self.device = pick_device(settings.precision)
        self.processes, self.is_main = distributed.num_processes(), distributed.is_main_process()
        self.sharding = distributed.sharded()  # "FSDP" or "DeepSpeed" from the accelerate config, else None
        self.checkpoints = checkpoints.folder(self.output_dir)
        self.resume_from = None  # the checkpoint an interrupted run of the same settings left
        self.tensorboard_dir = None
        self.peak_estimate = None  # bytes, from before_training's measured batch

    def __enter__(self):
        quiet_library_chatter()
        s, settings = self.settings, vars(self.settings)
        if s.offline:
            stay_offline()
        with contextlib.ExitStack() as held:  # the lock is given back if a check below refuses the run
            if self.is_main:
                held.enter_context(preflight.OutputLock(self.output_dir))  # the OS frees it if the run is killed
            preflight.check_method(s, self.device, self.sharding)
            preflight.check_output_dir(self.output_dir, settings, s.overwrite)
            self.resume_from = checkpoints.find_resume_point(self.output_dir, settings, s.resume, s.overwrite)
            self.tensorboard_dir = preflight.check_reporting(s.report_to, self.output_dir)
            if self.is_main:
                checkpoints.start(self.output_dir, settings, resuming=self.resume_from is not None)
            self.held = held.pop_all()
        return self

    def __exit__(self, error_type, error, traceback):
        if self.is_main:  # keep checkpoints only if the run stopped early and one can be resumed
            checkpoints.discard(self.output_dir, keep_resumable=error_type is not None)
        self.held.close()

    def before_training(self, trainer, token_stats: dict | None) -> None:
        """What a learner should know, and what can still be refused, just before training: LoRA's size, enough
        disk and memory (measured on one real batch), the time on a CPU. Then --compile's blocks. Without
        `token_stats` (GRPO, whose batches are sampled as it trains) only the disk is checked."""
        s = self.settings
        if lora := lora_summary(trainer.model, s):
            trainable, total = lora["trainable_parameters"], base_parameters(trainer.model)
            print(f"{'QLoRA (4-bit base)' if s.qlora else 'LoRA'}: rank {lora['rank']}, alpha {lora['alpha']}, "
                  f"on {', '.join(lora['target_modules'])}: {trainable / 1e6:.2f}M trainable parameters "
                  f"({trainable / total:.2%} of the model); learning rate {s.learning_rate:g} "
                  f"({lora['learning_rate_from']}).")
        examples = len(trainer.train_dataset) * getattr(trainer.args, "num_generations", 1)  # GRPO: answers
        steps = estimates.planned_steps(s, examples, self.processes)
        if self.is_main:
            model_bytes, checkpoint_bytes = estimates.disk_needs(trainer, trainer.processing_class)
            preflight.check_disk_space(self.output_dir, model_bytes, checkpoint_bytes,
                                       checkpoints=min(3, (steps[0] - 1) // s.save_steps))
        if token_stats and self.device.kind in ("cpu", "cuda") and not self.sharding:  # sharded: whole only later
            measurement = estimates.measure_one_batch(trainer)
            self.check_memory(measurement)
            if self.device.kind == "cpu" and self.resume_from is None:
                estimate = estimates.cpu_training_time(measurement, token_stats["tokens"], steps, self.processes)
                print(f"Estimated time on this CPU: {estimate}.")
        if self.resume_from is not None:
            print(f"\nResuming from {self.resume_from} (pass --no-resume to start over).")
        if s.compile:  # after the measurement, which would otherwise time the compiling
            from sft.train.trainer import compile_blocks

            compiled = compile_blocks(trainer.model)
            print(f"torch.compile: {compiled[0]} {compiled[1]} blocks, compiled during the first steps."
                  if compiled else "torch.compile: this model has no stack of identical blocks; --compile ignored.")

    def check_memory(self, measurement) -> None:
        """The peak the run will reach (the measured pass, plus AdamW's state from the first step on) against what
        the machine has: far over on a CPU is refused (the kernel would kill the run without a word); close,
        or over on a GPU (where the message comes from CUDA itself), is a warning."""
        gib, cuda = estimates.GIB, self.device.kind == "cuda"
        self.peak_estimate = measurement.peak_bytes + measurement.optimizer_bytes
        need = self.peak_estimate * (1 if cuda else distributed.processes_on_this_machine())
        room = estimates.available_memory(self.device.kind)
        where = "on the GPU" if cuda else "of memory"
        print(f"Memory: about {need / gib:.1f} GiB {where} at the peak (measured on the longest batch, plus "
              f"AdamW's state); {room / gib:.1f} GiB available.")
        if need > 1.3 * room and not cuda:
            raise UserError(f"this run needs about {need / gib:.1f} GiB of memory at its peak and this machine has "
                            f"{room / gib:.1f} GiB available: the system would kill it. "
                            f"Try {memory_advice(self.settings)}.")
        if need > 0.8 * room:
            print(f"NOTE: this run may run out of memory ({need / gib:.1f} GiB needed, {room / gib:.1f} GiB "
                  f"available). If it does, try {memory_advice(self.settings)}.")

    @contextlib.contextmanager
    def failures_explained(self):
        """Out of memory, a full disk and a failed --compile: the ways a good setup still fails, as advice."""
        s, device = self.settings, self.device.name
        try:
            yield
        except Exception as error:
            if s.compile and type(error).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise UserError(f"--compile: torch.compile failed on {device}: {first_line(error)}. Run without --compile "
                                "(on a CPU, torch.compile needs a working C++ compiler: gcc or clang)") from None
            if isinstance(error, (RuntimeError, MemoryError)) and is_out_of_memory(error):
                raise UserError(f"out of memory on {device} with --batch-size {s.batch_size}, "
                                f"--gradient-accumulation-steps {s.gradient_accumulation_steps}, --max-length "
                                f"{s.max_length}. Try {memory_advice(s)}.") from None
            if isinstance(error, OSError):
                raise UserError(f"could not write a checkpoint to {self.checkpoints}: "
                                f"{error.strerror or first_line(error)} (is the disk full?). Free some space and run "
                                "the same command again: it resumes from the newest complete checkpoint.") from None
            raise

    def print_summary(self, record: dict) -> None:
        """The closing banner: time, held-out loss (DPO: preference accuracy; GRPO: instructions followed) before
        and after, what to run next."""
        results, stage = record["results"], record["stage"]
        before, after = (f"{results[key]:.3f}" if results[key] is not None else "n/a"
                         for key in ("eval_loss_before", "eval_loss"))
        started_from, trained = (("base", "fine-tuned") if stage == "sft" else
                                 ((record["sft_model"]["stage"] or "sft").upper(), stage.upper()))
        held_out = (f"Held-out {'pairs: DPO loss' if stage == 'dpo' else 'loss:'} {before} ({started_from}) -> "
                    f"{after} ({trained})")
        if (accuracy := results.get("eval_preference_accuracy")) is not None:
            held_out += f"; the chosen answer gains more than the rejected one in {accuracy:.0%} of them"
        if stage == "grpo":
            held_out = (f"Held-out requests, form instructions followed: {results['held_out_followed_before']:.1%} "
                        f"({started_from}) -> {results['held_out_followed']:.1%} ({trained}); clean stop "
                        f"{results['held_out_clean_stop_before']:.0%} -> {results['held_out_clean_stop']:.0%}")
        banner(f"Done in {results['total_seconds'] / 60:.1f} min. {held_out}.\n"
               f"Model saved to {self.output_dir}/ with training_metadata.json and loss_curve.png.\n"
               f"Compare with the {started_from} model:  python test_chatbot.py --mode compare "
               f"--model {self.output_dir}"
               + (f"\nTensorBoard:  tensorboard --logdir {self.tensorboard_dir.parent}" if self.tensorboard_dir else ""))


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def memory_advice(s) -> str:
    """The settings that need less memory, with the run's own values: the same effective batch first."""
    batch, accumulate = s.batch_size, s.gradient_accumulation_steps
    smaller = (batch // 2, accumulate * 2) if batch % 2 == 0 else (1, accumulate * batch)
    advice = [f"--batch-size {smaller[0]} --gradient-accumulation-steps {smaller[1]} (the same effective batch of "
              f"{s.effective_batch_size})" if batch > 1 else None,
              f"--max-length {s.max_length // 2}",
              "--gradient-checkpointing" if not s.gradient_checkpointing else None]
    return ", or ".join(a for a in advice if a)
