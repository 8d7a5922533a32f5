"""Resumable checkpoints: OUTPUT_DIR-checkpoints/checkpoint-STEP, written by the Trainer every SAVE_STEPS.

Each holds the weights, the optimizer and scheduler state, the random state and the position in the
data, so that the same command continues an interrupted run where it stopped. The folder is marked
with the run's settings (RUN_FILE), kept while the run is unfinished, and removed once the model is
saved.
"""

import json
import shutil
from pathlib import Path

from sft.errors import UserError
from sft.settings import differing

RUN_FILE = "run_settings.json"  # marks a checkpoints folder as ours, with the settings of its run


def folder(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + "-checkpoints")


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("checkpoint-"))


def newest(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint: the Trainer writes trainer_state.json last, so a torn one has none."""
    complete = [c for c in checkpoints.glob("checkpoint-*") if (c / "trainer_state.json").is_file()
                and c.name.removeprefix("checkpoint-").isdigit()]
    return max(complete, key=step_of, default=None)


def find_resume_point(output_dir: Path, settings: dict, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to continue from, if this run was interrupted before; refuse to discard another run's."""
    checkpoints = folder(output_dir)
    if not checkpoints.exists():
        return None
    try:
        previous = json.loads((checkpoints / RUN_FILE).read_text())
    except (OSError, ValueError):
        raise UserError(f"{checkpoints} exists and was not written by these scripts; it is left untouched. "
                        "Move it away, or choose another --output-dir.") from None
    checkpoint = newest(checkpoints)
    if checkpoint is None:
        return None
    differences = differing(previous, settings)
    if differences and not overwrite:
        raise UserError(f"{checkpoints} holds checkpoints of an unfinished run with other settings "
                        f"({', '.join(differences)}). Run it again with those settings to resume it, or pass "
                        "--overwrite to discard them.")
    return checkpoint if resume and not differences else None


def start(output_dir: Path, settings: dict, resuming: bool) -> Path:
    """The folder the Trainer checkpoints into: kept as it is when resuming, otherwise started afresh."""
    checkpoints = folder(output_dir)
    if not resuming:
        shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / RUN_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return checkpoints


def discard(output_dir: Path, keep_resumable: bool) -> None:
    """Remove the checkpoints after success, or after a failure that left nothing to resume from."""
    checkpoints = folder(output_dir)
    if checkpoints.exists() and not (keep_resumable and newest(checkpoints) is not None):
        shutil.rmtree(checkpoints, ignore_errors=True)
