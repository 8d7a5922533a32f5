"""Trainer callbacks: what the run prints while it trains, Ctrl-C, and no checkpoint at the very end."""

import signal
import sys
import time
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback

from sft.errors import Interrupted
from sft.train.checkpoints import newest


class LogLines(ProgressCallback):
    """The progress bar with its ETA, and one readable line per logging interval instead of a raw dict:

        step    10/20 | epoch 0.50 | loss 2.3253 | lr 1.10e-05 | 38 tok/s | 4.93 s/step
        eval  | step    20 | eval loss 1.3291 | token accuracy 68.2%

    DPO adds its rewards (rewards() below) to both lines; GRPO shows its reward instead of the loss.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        # After a resume, the state already holds the steps and tokens of the run's earlier part.
        self.last = {"time": time.time(), "tokens": state.num_input_tokens_seen, "step": state.global_step}
        if state.is_world_process_zero:
            processes = f" x {args.world_size} processes" if args.world_size > 1 else ""
            conversations = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
            what = ("conversations" if not hasattr(args, "beta") else  # DPOConfig and GRPOConfig have a beta
                    "answers" if hasattr(args, "num_generations") else "preference pairs")
            groups = f"{args.num_generations} per prompt; " if hasattr(args, "num_generations") else ""
            print(f"\nTraining: {state.max_steps} optimizer steps of {conversations} {what} ({groups}"
                  f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps} accumulated{processes}), "
                  f"lr {args.learning_rate:g}, {longest(args)}.\n", flush=True)
        super().on_train_begin(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = self.line(state, logs or {})
        if line and state.is_world_process_zero:
            (self.training_bar.write if self.training_bar is not None else print)(line)

    def line(self, state, logs: dict) -> str | None:
        if "eval_loss" in logs:
            return (f"eval  | step {state.global_step:>5} | eval loss {logs['eval_loss']:.4f}"
                    + (rewards(logs, "eval_") if "eval_rewards/margins" in logs else
                       f" | token accuracy {logs.get('eval_mean_token_accuracy', float('nan')):.1%}"))
        if "loss" not in logs:
            return None
        now, tokens = time.time(), logs.get("num_tokens", 0)
        seconds = max(now - self.last["time"], 1e-9)
        steps = max(state.global_step - self.last["step"], 1)
        tokens_per_second = (tokens - self.last["tokens"]) / seconds
        self.last = {"time": now, "tokens": tokens, "step": state.global_step}
        signals = (grpo_signals(logs) if "reward" in logs else
                   f" | loss {logs['loss']:.4f}{rewards(logs) if 'rewards/margins' in logs else ''}")
        return (f"step {state.global_step:>5}/{state.max_steps} | epoch {logs.get('epoch', 0):.2f}{signals}"
                f" | lr {logs.get('learning_rate', 0):.2e} | {tokens_per_second:,.0f} tok/s"
                f" | {seconds / steps:.2f} s/step")


def longest(args) -> str:
    """The length limit: of a whole example, or (GRPO, whose prompts are kept whole) of a sampled answer."""
    if hasattr(args, "max_completion_length"):
        return f"answers of up to {args.max_completion_length} tokens"
    return f"max_length {args.max_length}"


def rewards(logs: dict, prefix: str = "") -> str:
    """DPO's signals: each answer's reward (beta x the log of how much more likely the model makes it than the
    reference does), their margin, and how often the chosen answer's reward is the higher (preference accuracy)."""
    chosen, rejected = logs[prefix + "rewards/chosen"], logs[prefix + "rewards/rejected"]
    accuracy = ("no preference yet (the model is still its reference)" if abs(chosen) + abs(rejected) < 1e-9
                else f"preference accuracy {logs[prefix + 'rewards/accuracies']:.0%}")
    return (f" | reward chosen {chosen:+.3f} rejected {rejected:+.3f} margin {logs[prefix + 'rewards/margins']:+.3f}"
            f" | {accuracy}")


def grpo_signals(logs: dict) -> str:
    """GRPO's: the sampled answers' mean reward, the shares that followed their instruction and stopped cleanly
    (each reward function's mean), the KL from the starting model (with a beta), their mean length in tokens."""
    followed, stopped = (logs.get(f"rewards/{name}/mean", float("nan"))
                         for name in ("follows_the_instruction", "stops_cleanly"))
    return (f" | reward {logs['reward']:.3f} | followed {followed:.0%} | clean stop {stopped:.0%}"
            + (f" | KL {logs['kl']:.4f}" if "kl" in logs else "")
            + f" | {logs.get('completions/mean_length', 0):.0f} tokens")


class StopOnCtrlC(TrainerCallback):
    """While training, the first Ctrl-C asks the Trainer to save a checkpoint after the current step and stop;
    a second one stops at once (the newest complete checkpoint still resumes).

        with stop_on_ctrl_c:
            trainer.train()
        stop_on_ctrl_c.stop_if_requested(trainer)
    """

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again stops at once)...",
              file=sys.stderr, flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested and state.global_step < state.max_steps:
            control.should_save, control.should_evaluate, control.should_training_stop = True, False, True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_evaluate = False

    def stop_if_requested(self, trainer) -> None:
        """After trainer.train(): end the run with the resume instructions if Ctrl-C stopped it early."""
        state = trainer.state
        if self.requested and state.global_step < state.max_steps:
            raise Interrupted(f"Interrupted at step {state.global_step}/{state.max_steps}; checkpoint saved in "
                              f"{newest(Path(trainer.args.output_dir))}.\n"
                              "Run the same command again to continue from there (--no-resume starts over).")


class NoCheckpointAtTheEnd(TrainerCallback):
    """The finished model is saved next, whole: a checkpoint of the last step would only be deleted again."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False


class AnswersAtEvaluation(TrainerCallback):
    """At each evaluation, a few fixed prompts answered greedily, printed under the eval line (and logged to
    TensorBoard as text when it is on): the learner watches the answers change as the loss falls."""

    PROMPTS = ["What is the capital of France?", "How many legs does a spider have?",
               "Write a Python function to calculate fibonacci numbers."]
    MAX_NEW_TOKENS = 32

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        from sft.distributed import sharded

        if not state.is_world_process_zero or sharded() or model is None:  # sharded weights: every process must join
            return
        answers = self.answer(model)
        print("\n".join(f"  {prompt}  ->  {answer!r}" for prompt, answer in zip(self.PROMPTS, answers)), flush=True)
        if "tensorboard" in args.report_to:
            self.log_to_tensorboard(answers, state.global_step)

    def answer(self, model) -> list[str]:
        from sft.generation import Decoding, generate_batch

        was_training, padding_side = model.training, self.tokenizer.padding_side
        model.eval()
        rows, _ = generate_batch(model, self.tokenizer, [[{"role": "user", "content": p}] for p in self.PROMPTS],
                                 Decoding(max_new_tokens=self.MAX_NEW_TOKENS), seed=0)
        model.train(was_training)
        self.tokenizer.padding_side = padding_side  # the saved tokenizer keeps its own
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]

    def log_to_tensorboard(self, answers: list[str], step: int) -> None:
        import os

        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(os.environ["TENSORBOARD_LOGGING_DIR"]) as writer:
            table = "| prompt | answer |\n|---|---|\n" + "\n".join(
                f"| {prompt} | {answer.replace('|', '/').replace(chr(10), ' ')} |"
                for prompt, answer in zip(self.PROMPTS, answers))
            writer.add_text("answers", table, step)
