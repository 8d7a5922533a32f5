"""Checks made before any work, so that a run that cannot end well is refused in its first second."""

import importlib.util
import os
from pathlib import Path

from .errors import UserError
from .metadata import read_metadata
from .settings import differing


def check_method(settings, device, sharding: str | None) -> None:
    """LoRA under sharding, and QLoRA without an NVIDIA GPU or bitsandbytes, cannot run."""
    if settings.uses_lora and sharding:
        raise UserError(f"{'--qlora' if settings.qlora else '--lora'} under {sharding} is not supported here: LoRA's "
                        "adapters are small enough to copy to every GPU, so launch with configs/ddp.yaml instead")
    if settings.qlora and (reason := qlora_unavailable(device)):
        raise UserError(reason)


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
