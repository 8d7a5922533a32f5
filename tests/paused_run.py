"""Runs one of the project's scripts with a pause point that the test controls, so that a test of interruption
waits on an event and never races the run, however fast or loaded the machine is:

    python tests/paused_run.py WHEN SCRIPT [ARGS...]

WHEN is one of
    checkpoint=N    once checkpoint-N is saved, print "paused after checkpoint-N" and wait there (to be killed)
    ctrl-c=N        press Ctrl-C (SIGINT to this process) as optimizer step N+1 begins
    ctrl-c-twice=N  press it twice there: the second comes while that step is still running
    hold=FILE       as training begins, print "holding" and wait until FILE exists

SCRIPT runs as `python SCRIPT ARGS` would, as __main__. The pause is a TrainerCallback added to every Trainer the
script builds; nothing else changes.
"""

import os
import runpy
import signal
import sys
import time
from pathlib import Path

from transformers import Trainer, TrainerCallback


class Pause(TrainerCallback):
    def __init__(self, when: str):
        self.kind, _, value = when.partition("=")
        self.value = value if self.kind == "hold" else int(value)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.kind == "hold":
            print("holding", flush=True)
            deadline = time.time() + 600  # only against a test that never lets go
            while not Path(self.value).exists() and time.time() < deadline:
                time.sleep(0.05)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.kind.startswith("ctrl-c") and state.global_step == self.value:
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the script's handler before the next line
            if self.kind == "ctrl-c-twice":
                os.kill(os.getpid(), signal.SIGINT)

    def on_save(self, args, state, control, **kwargs):
        if self.kind == "checkpoint" and state.global_step == self.value:
            if state.is_world_process_zero:
                print(f"paused after checkpoint-{self.value}", flush=True)
            while True:
                time.sleep(60)


def main() -> None:
    when, script, *args = sys.argv[1:]
    build = Trainer.__init__

    def with_pause(trainer, *a, **kw):
        build(trainer, *a, **kw)
        trainer.add_callback(Pause(when))

    Trainer.__init__ = with_pause
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
