"""Checks made before any work, so that a run that cannot end well is refused in its first seconds:
one writer per output folder, settings the machine can run, a folder we may write, enough disk space."""

import datetime
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

from sft.errors import UserError
from sft.settings import differing
from sft.train.metadata import read_metadata


def check_method(settings, device, sharding: str | None) -> None:
    """LoRA under sharding, and QLoRA without an NVIDIA GPU or bitsandbytes, cannot run."""
    if settings.uses_lora and sharding:
        raise UserError(f"{'--qlora' if settings.qlora else '--lora'} under {sharding} is not supported here: LoRA's "
                        "adapters are small enough to copy to every GPU, so launch with configs/ddp.yaml instead")
    if settings.qlora and (reason := qlora_unavailable(device)):
        raise UserError(reason)
    if device.precision == "fp16" and device.kind != "cuda":
        raise UserError(f"--precision fp16 needs an NVIDIA GPU (the Trainer's fp16 mixed precision is CUDA's); this "
                        f"machine trains on {device.name}: use --precision auto")
    if device.precision == "bf16" and device.kind == "mps":
        raise UserError("--precision bf16 is not supported on Apple MPS here: use --precision auto (fp32)")


def qlora_unavailable(device) -> str | None:
    """Why --qlora cannot run here, or None: bitsandbytes' 4-bit training is made for NVIDIA GPUs."""
    if device.kind != "cuda":
        return (f"--qlora loads the base model in 4 bits with bitsandbytes, which needs an NVIDIA GPU (CUDA); "
                f"this machine trains on {device.name}. Use --lora instead: the same adapters on the full-precision "
                "model.")
    if importlib.util.find_spec("bitsandbytes") is None:
        return "--qlora needs the bitsandbytes package: pip install bitsandbytes"
    return None


def check_output_dir(output_dir: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to replace something that is not ours, or a model of other settings without --overwrite."""
    if not output_dir.exists():
        check_writable(output_dir.parent)
        return
    if not output_dir.is_dir():
        raise UserError(f"--output-dir {output_dir} is a file, not a folder: choose another --output-dir")
    if not any(output_dir.iterdir()):
        return
    previous = read_metadata(output_dir)
    if previous is None:
        raise UserError(f"{output_dir} already exists and is not a model folder written by these scripts; "
                        "it is left untouched. Choose another --output-dir (or move that folder away).")
    differences = differing(previous.get("settings", {}), settings)
    if differences and not overwrite:
        raise UserError(f"{output_dir} holds a model trained with other settings ({', '.join(differences)}). "
                        "Pass --overwrite to replace it, or choose another --output-dir.")


def check_writable(parent: Path) -> None:
    """Try to create (and remove) a folder in `parent`: the only test that also holds for root and read-only disks."""
    existing = parent
    while not existing.exists():  # the nearest folder that exists; the rest is created when saving
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create --output-dir inside {existing}: it is a file, not a folder")
    probe = existing / f".write-test-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as error:
        raise UserError(f"cannot write to {existing}: {error.strerror or error}; choose another --output-dir") from None


def check_reporting(report_to: str, output_dir: Path) -> Path | None:
    """Check that the chosen logger is installed; TensorBoard logs go to ./runs/NAME beside OUTPUT_DIR."""
    if report_to == "none":
        return None
    package = "tensorboard" if report_to == "tensorboard" else "wandb"
    if importlib.util.find_spec(package) is None:
        raise UserError(f"--report-to {report_to} needs the {package} package: pip install {package}")
    if report_to != "tensorboard":
        return None
    runs = output_dir.parent / "runs" / output_dir.name
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(runs)  # where transformers' TensorBoard callback writes
    return runs


class OutputLock:
    """One run at a time writes OUTPUT_DIR: an OS file lock, which the OS releases if the run is killed, so
    that a dead run never blocks the next one. The lock files live in the project's cache, not beside the
    model; a second run reads who holds the lock from the JSON file next to it."""

    def __init__(self, output_dir: Path):
        from sft.offline_kit import cache_dir

        self.output_dir = output_dir
        key = hashlib.sha256(str(output_dir.expanduser().resolve()).encode()).hexdigest()[:24]
        self.path = cache_dir() / "locks" / f"{key}.lock"

    def __enter__(self):
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.path), timeout=0)
        try:
            self.lock.acquire()
        except Timeout:
            raise UserError(f"another run ({self.holder()}) is writing {self.output_dir}: wait for it or choose "
                            "another --output-dir") from None
        started = datetime.datetime.now().strftime("%H:%M")
        self.path.with_suffix(".json").write_text(json.dumps(
            {"pid": os.getpid(), "started": started, "output_dir": str(self.output_dir)}))
        return self

    def holder(self) -> str:
        try:
            info = json.loads(self.path.with_suffix(".json").read_text())
            return f"pid {info['pid']}, started {info['started']}"
        except (OSError, ValueError, KeyError):  # between its lock and its note
            return "just started"

    def __exit__(self, *exc):
        self.path.with_suffix(".json").unlink(missing_ok=True)
        self.lock.release()


def check_disk_space(output_dir: Path, model_bytes: int, checkpoint_bytes: int, checkpoints: int) -> None:
    """Refuse a run whose files will not fit beside OUTPUT_DIR: the model folder (written aside, then renamed)
    and, while training, up to `checkpoints` checkpoints (the newest two kept, a third being written)."""
    existing = output_dir.parent
    while not existing.exists():
        existing = existing.parent
    need = max(checkpoints * checkpoint_bytes, min(checkpoints, 2) * checkpoint_bytes + model_bytes)
    free = shutil.disk_usage(existing).free
    if need > free:
        gb = 1e9
        parts = (f"the model folder, {model_bytes / gb:.2f} GB"
                 + (f", and {checkpoints} checkpoints with their optimizer state, {checkpoint_bytes / gb:.2f} GB "
                    "each" if checkpoints else ""))
        raise UserError(f"not enough disk space for this run: it writes about {need / gb:.2f} GB ({parts}) and "
                        f"{existing} has {free / gb:.2f} GB free. Free some space, choose an --output-dir on "
                        "another disk, write fewer checkpoints (a --save-steps above the run's steps writes none), "
                        "or train with --lora (its checkpoints hold only the adapters)")
