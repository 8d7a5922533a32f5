"""Save: write the finished model folder, all at once or not at all.

OUTPUT_DIR is a standard Hugging Face model folder:

    model.safetensors, config.json, generation_config.json   weights; generation stops at end-of-text
    tokenizer.json, tokenizer_config.json                     tokenizer with the chat template
    training_metadata.json                                    see metadata.py
    loss_curve.png                                            train and eval loss against steps
    README.md                                                 model card (model_card.py)
    adapter/                                                  with --lora/--qlora: the adapter alone (PEFT)

Everything is written to a hidden staging folder beside OUTPUT_DIR and renamed into place only when
complete, so an interrupted run never leaves a half-written model where test_chatbot.py would load it,
and a previous good model survives a failed run.

During training, resumable checkpoints (weights, optimizer, scheduler, random state, data position)
go to OUTPUT_DIR-checkpoints/checkpoint-STEP, the newest two kept; the folder is removed once the
model is saved.
"""

import json
import os
import shutil
from pathlib import Path

from .config import TrainConfig
from .errors import UserError
from .metadata import TrainingMetadata, read_metadata, write_metadata
from .model_card import model_card
from .models import merge_adapter

LOSS_CURVE_FILE = "loss_curve.png"
ADAPTER_DIR = "adapter"
RUN_FILE = "run_settings.json"  # marks a checkpoints folder as ours, with the settings of its run


def staging_dir(output_dir: Path) -> Path:
    return output_dir.with_name(f".{output_dir.name}.incomplete-{os.getpid()}")


def differing_settings(previous: dict, settings: dict) -> list[str]:
    """Names of the settings that make two runs different (run controls such as --save-steps do not)."""
    return sorted(name for name in settings
                  if name not in TrainConfig.RUN_CONTROLS and previous.get(name) != settings[name])


def check_output_dir(output_dir: Path, settings: dict, overwrite: bool) -> None:
    """Refuse, before any work, to replace something that is not ours or a different run without --overwrite."""
    if not output_dir.exists():
        _check_writable(output_dir.parent)
        return
    if not output_dir.is_dir():
        raise UserError(f"--output-dir {output_dir} is a file, not a folder: choose another --output-dir")
    if not any(output_dir.iterdir()):
        return
    previous = read_metadata(output_dir)
    if previous is None:
        raise UserError(f"{output_dir} already exists and is not a model folder written by these scripts; "
                        "it is left untouched. Choose another --output-dir (or move that folder away).")
    differences = differing_settings(previous.get("settings", {}), settings)
    if differences and not overwrite:
        raise UserError(f"{output_dir} holds a model trained with other settings ({', '.join(differences)}). "
                        "Pass --overwrite to replace it, or choose another --output-dir.")


def _check_writable(parent: Path) -> None:
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


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + "-checkpoints")


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint: the Trainer writes trainer_state.json last, so a torn one has none."""
    complete = [c for c in folder.glob("checkpoint-*") if (c / "trainer_state.json").is_file()
                and c.name.removeprefix("checkpoint-").isdigit()]
    return max(complete, key=lambda c: int(c.name.removeprefix("checkpoint-")), default=None)


def find_resume_checkpoint(output_dir: Path, settings: dict, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to continue from, if this run was interrupted before; refuse to discard another run's."""
    folder = checkpoints_dir(output_dir)
    if not folder.exists():
        return None
    try:
        previous = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        raise UserError(f"{folder} exists and was not written by these scripts; it is left untouched. "
                        "Move it away, or choose another --output-dir.") from None
    checkpoint = newest_checkpoint(folder)
    if checkpoint is None:
        return None
    differences = differing_settings(previous, settings)
    if differences and not overwrite:
        raise UserError(f"{folder} holds checkpoints of an unfinished run with other settings "
                        f"({', '.join(differences)}). Run it again with those settings to resume it, or pass "
                        "--overwrite to discard them.")
    return checkpoint if resume and not differences else None


def start_checkpoints(output_dir: Path, settings: dict, resuming: bool) -> Path:
    """The folder the Trainer checkpoints into: kept as it is when resuming, otherwise started afresh."""
    folder = checkpoints_dir(output_dir)
    if not resuming:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return folder


def discard_checkpoints(output_dir: Path, keep_resumable: bool) -> None:
    """Remove the checkpoints folder after success, or after a failure that left nothing to resume from."""
    folder = checkpoints_dir(output_dir)
    if folder.exists() and not (keep_resumable and newest_checkpoint(folder) is not None):
        shutil.rmtree(folder, ignore_errors=True)


def plot_loss_curve(log_history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss (held-out chats)", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per trained token")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_model_folder(output_dir: Path, trainer, tokenizer, metadata: TrainingMetadata,
                       state_dict: dict | None = None, full_precision_base=None) -> None:
    """Save model, tokenizer, metadata and plot into staging, then swap it into output_dir.

    `state_dict`: the full weights, when they were sharded over several processes (FSDP, DeepSpeed).
    `full_precision_base`: after QLoRA, a function loading the base unquantized, to merge the adapter into.
    """
    staging = staging_dir(output_dir)
    model = trainer.model
    try:
        if hasattr(model, "merge_and_unload"):  # LoRA: keep the adapter, and save the model with it merged in
            model.save_pretrained(staging / ADAPTER_DIR)
            model = merge_adapter(model, full_precision_base() if full_precision_base else None)
        # Generation stops at end-of-text, the token that closes every answer in training.
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(staging, state_dict=state_dict)  # safetensors, config.json, generation_config.json
        tokenizer.save_pretrained(staging)  # with the chat template (chat_template.jinja)
        plot_loss_curve(trainer.state.log_history, staging / LOSS_CURVE_FILE,
                        f"SFT of {metadata.base_model} on {metadata.dataset}")
        write_metadata(metadata, staging)
        (staging / "README.md").write_text(model_card(metadata, tokenizer), encoding="utf-8")
        if output_dir.exists():
            retired = output_dir.with_name(f".{output_dir.name}.replaced-{os.getpid()}")
            output_dir.rename(retired)
            staging.rename(output_dir)
            shutil.rmtree(retired)
        else:
            staging.rename(output_dir)
    except OSError as error:
        raise UserError(f"could not save the model to {output_dir}: {error.strerror or error} "
                        "(is the disk full or the folder read-only?)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
