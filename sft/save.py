"""Save: write the finished model folder, all at once or not at all.

OUTPUT_DIR is a standard Hugging Face model folder:

    model.safetensors, config.json, generation_config.json   weights; generation stops at end-of-text
    tokenizer.json, tokenizer_config.json                     tokenizer with the chat template
    training_metadata.json                                    see metadata.py
    loss_curve.png                                            train and eval loss against steps

Everything is written to a hidden staging folder beside OUTPUT_DIR and renamed into place only when
complete, so an interrupted run never leaves a half-written model where test_chatbot.py would load it,
and a previous good model survives a failed run.
"""

import os
import shutil
from pathlib import Path

from .errors import UserError
from .metadata import TrainingMetadata, read_metadata, write_metadata

LOSS_CURVE_FILE = "loss_curve.png"


def staging_dir(output_dir: Path) -> Path:
    return output_dir.with_name(f".{output_dir.name}.incomplete-{os.getpid()}")


def check_output_dir(output_dir: Path, settings: dict, overwrite: bool) -> None:
    """Refuse, before any work, to replace something that is not ours or a different run without --overwrite."""
    if not output_dir.exists():
        parent = output_dir.parent if str(output_dir.parent) else Path(".")
        if not os.access(parent if parent.exists() else Path("."), os.W_OK):
            raise UserError(f"cannot write to {parent}: choose another --output-dir")
        return
    if not output_dir.is_dir():
        raise UserError(f"--output-dir {output_dir} is a file, not a folder: choose another --output-dir")
    if not any(output_dir.iterdir()):
        return
    previous = read_metadata(output_dir)
    if previous is None:
        raise UserError(f"{output_dir} already exists and is not a model folder written by these scripts; "
                        "it is left untouched. Choose another --output-dir (or move that folder away).")
    if previous.get("settings") != settings and not overwrite:
        differences = sorted(k for k in settings if previous.get("settings", {}).get(k) != settings[k])
        raise UserError(f"{output_dir} holds a model trained with other settings ({', '.join(differences)}). "
                        "Pass --overwrite to replace it, or choose another --output-dir.")


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


def write_model_folder(output_dir: Path, trainer, tokenizer, metadata: TrainingMetadata) -> None:
    """Save model, tokenizer, metadata and plot into staging, then swap it into output_dir."""
    staging = staging_dir(output_dir)
    model = trainer.model
    # Generation stops at end-of-text, the token that closes every answer in training.
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    try:
        model.save_pretrained(staging)  # safetensors weights, config.json, generation_config.json
        tokenizer.save_pretrained(staging)  # with the chat template (chat_template.jinja)
        plot_loss_curve(trainer.state.log_history, staging / LOSS_CURVE_FILE,
                        f"SFT of {metadata.base_model} on {metadata.dataset}")
        write_metadata(metadata, staging)
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
