"""Several processes: the same script on several GPUs or machines, through `accelerate launch`.

    accelerate launch --config_file configs/ddp.yaml --num_processes 4 train_chatbot.py

The launcher starts one copy of the script per GPU and tells each its rank in the environment. Every
copy loads the model and data and trains on its own share of each batch; the Trainer (through
accelerate) averages the gradients. Rank 0, the main process, is the only one that prints, writes
checkpoints' shared files, saves the model folder and removes checkpoints.

The rank is read from the launcher's environment rather than from accelerate.PartialState(): creating
that state starts the process group, which the Trainer does itself with its own settings (use_cpu,
backend, timeout), and it is needed before anything else, to silence the other processes.
"""

import contextlib
import functools
import os


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def num_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return rank() == 0


def processes_on_this_machine() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def cores_per_process() -> int:
    """This machine's CPU cores, shared among the training processes that run on it."""
    return max(1, (os.cpu_count() or 1) // processes_on_this_machine())


def sharded() -> str | None:
    """'FSDP' or 'DeepSpeed' when the accelerate config shards the model over the processes, else None."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "FSDP"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "DeepSpeed"
    return None


def only_the_main_process_prints(main):
    """Only the main process writes to stdout; the others' copies of every line would say nothing new."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        if is_main_process():
            return main(*args, **kwargs)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            return main(*args, **kwargs)

    return wrapper
