"""One training run, around the recipe: the checks before any work, and what happens when it ends.

    with Run(settings) as run:   # device picked, settings and folders checked, checkpoints prepared
        ...                      # the recipe (train_chatbot.py)
    # on the way out: checkpoints removed, unless the run stopped early and can resume from one

It also prints what a learner should know just before training (LoRA's size, the CPU time estimate),
turns the failures a good setup can still meet into advice, and prints the closing summary.
"""

import contextlib
import time
from pathlib import Path

from . import checkpoints, distributed, estimates, preflight
from .console import banner, quiet_library_chatter
from .devices import pick_device
from .errors import UserError, first_line
from .lora import base_parameters, lora_summary
from .models import stay_offline


class Run:
    def __init__(self, settings):
        self.settings = settings
        self.output_dir = Path(settings.output_dir)
        self.started = time.time()
        self.device = pick_device()
        self.processes, self.is_main = distributed.num_processes(), distributed.is_main_process()
        self.sharding = distributed.sharded()  # "FSDP" or "DeepSpeed" from the accelerate config, else None
        self.checkpoints = checkpoints.folder(self.output_dir)
        self.resume_from = None  # the checkpoint an interrupted run of the same settings left
        self.tensorboard_dir = None

    def __enter__(self):
        quiet_library_chatter()
        s, settings = self.settings, vars(self.settings)
        if s.offline:
            stay_offline()
        preflight.check_method(s, self.device, self.sharding)
        preflight.check_output_dir(self.output_dir, settings, s.overwrite)
        self.resume_from = checkpoints.find_resume_point(self.output_dir, settings, s.resume, s.overwrite)
        self.tensorboard_dir = preflight.check_reporting(s.report_to, self.output_dir)
        if self.is_main:
            checkpoints.start(self.output_dir, settings, resuming=self.resume_from is not None)
        return self

    def __exit__(self, error_type, error, traceback):
        if self.is_main:  # keep checkpoints only if the run stopped early and one can be resumed
            checkpoints.discard(self.output_dir, keep_resumable=error_type is not None)

    def before_training(self, trainer, token_stats: dict) -> None:
        """Print LoRA's size and, on a CPU, the time the run will take; compile the blocks with --compile."""
        s = self.settings
        if lora := lora_summary(trainer.model, s):
            trainable, total = lora["trainable_parameters"], base_parameters(trainer.model)
            print(f"{'QLoRA (4-bit base)' if s.qlora else 'LoRA'}: rank {lora['rank']}, alpha {lora['alpha']}, "
                  f"on {', '.join(lora['target_modules'])}: {trainable / 1e6:.2f}M trainable parameters "
                  f"({trainable / total:.2%} of the model).")
        if self.device.kind == "cpu" and self.resume_from is None:
            estimate = estimates.cpu_training_time(trainer, s, token_stats["tokens"], self.processes)
            print(f"Estimated time on this CPU: {estimate}.")
        if self.resume_from is not None:
            print(f"\nResuming from {self.resume_from} (pass --no-resume to start over).")
        if s.compile:  # after the estimate, which would otherwise time the compiling
            from .trainer import compile_blocks

            compiled = compile_blocks(trainer.model)
            print(f"torch.compile: {compiled[0]} {compiled[1]} blocks, compiled during the first steps."
                  if compiled else "torch.compile: this model has no stack of identical blocks; --compile ignored.")

    @contextlib.contextmanager
    def failures_explained(self):
        """Out of memory, a full disk and a failed --compile: the ways a good setup still fails, as advice."""
        s, device = self.settings, self.device.name
        try:
            yield
        except Exception as error:
            if s.compile and type(error).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise UserError(f"--compile: torch.compile failed on {device}: {first_line(error)}. Run without "
                                "--compile (on a CPU, torch.compile needs a working C++ compiler: gcc or clang)") from None
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
        """The closing banner: time, held-out loss before and after, and what to run next."""
        results = record["results"]
        before, after = (f"{results[key]:.3f}" if results[key] is not None else "n/a"
                         for key in ("eval_loss_before", "eval_loss"))
        banner(f"Done in {results['total_seconds'] / 60:.1f} min. Held-out loss: {before} (base) -> {after} "
               f"(fine-tuned).\nModel saved to {self.output_dir}/ with training_metadata.json and loss_curve.png.\n"
               f"Compare with the base model:  python test_chatbot.py --mode compare --model {self.output_dir}"
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
