"""Save: write the finished model folder, all at once or not at all.

OUTPUT_DIR is a standard Hugging Face model folder:

    model.safetensors, config.json, generation_config.json   weights; generation stops at end-of-text and
                                                              samples as in CHAT_DEFAULTS (generation.py)
    tokenizer.json, tokenizer_config.json                     tokenizer with the chat template
    training_metadata.json                                    see metadata.py
    loss_curve.png                                            train and eval loss against steps (GRPO: reward)
    README.md                                                 model card (model_card.py)
    adapter/                                                  with --lora/--qlora: the adapter alone (PEFT)

Everything is written to a hidden staging folder beside OUTPUT_DIR and renamed into place only when
complete, so an interrupted run never leaves a half-written model where test_chatbot.py would load it,
and a previous good model survives a failed run.
"""

import os
import shutil
from pathlib import Path

from sft.errors import UserError
from sft.generation import CHAT_DEFAULTS
from sft.train.lora import merge_adapter
from sft.train.metadata import write_metadata
from sft.train.model_card import model_card

LOSS_CURVE_FILE = "loss_curve.png"
ADAPTER_DIR = "adapter"


def staging_dir(output_dir: Path) -> Path:
    return output_dir.with_name(f".{output_dir.name}.incomplete-{os.getpid()}")


def write_model_folder(run, trainer, tokenizer, record: dict) -> None:
    """Save model, tokenizer, metadata, plot and model card into staging, then swap it into OUTPUT_DIR.

    Under FSDP or DeepSpeed every process gathers the sharded weights; only the main process writes."""
    state_dict = trainer.accelerator.get_state_dict(trainer.model) if run.sharding else None
    if not run.is_main:
        return
    output_dir, staging = run.output_dir, staging_dir(run.output_dir)
    model = trainer.model
    try:
        if hasattr(model, "merge_and_unload"):  # LoRA: keep the adapter, and save the model with it merged in
            model.save_pretrained(staging / ADAPTER_DIR)
            model = merge_adapter(model, full_precision_base(record, run.settings) if run.settings.qlora else None)
        # Generation stops at end-of-text, the token that closes every answer in training.
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.update(**CHAT_DEFAULTS)  # how local chat tools and our chat modes decode
        model.save_pretrained(staging, state_dict=state_dict)  # safetensors, config.json, generation_config.json
        tokenizer.save_pretrained(staging)  # with the chat template (chat_template.jinja)
        plot_loss_curve(trainer.state.log_history, staging / LOSS_CURVE_FILE, record)
        write_metadata(record, staging)
        (staging / "README.md").write_text(model_card(record, tokenizer), encoding="utf-8")
        swap_in(staging, output_dir)
    except OSError as error:
        raise UserError(f"could not save the model to {output_dir}: {error.strerror or error} "
                        "(is the disk full or the folder read-only?)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def full_precision_base(record: dict, settings):
    """After QLoRA: the base model loaded again unquantized, for the adapter to be merged into."""
    import torch

    from sft.models import base_source_from_metadata, load_model

    return load_model(base_source_from_metadata(record), dtype=torch.float32,
                      trust_remote_code=settings.trust_remote_code, dropout=settings.dropout)


def swap_in(staging: Path, output_dir: Path) -> None:
    """Rename the finished `staging` folder to `output_dir`, replacing an earlier model there. If that last
    rename fails, the earlier model is put back; if even that fails, the message says where it is."""
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    retired = output_dir.with_name(f".{output_dir.name}.replaced-{os.getpid()}")
    output_dir.rename(retired)
    try:
        staging.rename(output_dir)
    except OSError as error:
        try:
            retired.rename(output_dir)
        except OSError:
            raise UserError(f"could not save the model to {output_dir}: {error.strerror or error}. The earlier "
                            f"model is intact in {retired}: rename it back to {output_dir}") from None
        raise
    shutil.rmtree(retired)


# What each stage's curve shows: (the logged value, its axis label, what its held-out points are scored on).
CURVES = {"sft": ("loss", "cross-entropy per trained token", "held-out chats"),
          "dpo": ("loss", "DPO loss per pair (ln 2 = 0.693 at the start)", "held-out pairs"),
          "grpo": ("reward", "mean reward of the sampled answers", None)}  # GRPO's loss says little: its reward


def plot_loss_curve(log_history: list[dict], path: Path, record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    key, ylabel, held_out = CURVES[record["stage"]]
    train = [(e["step"], e[key]) for e in log_history if key in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), ".-", label=f"train {key}", color="tab:blue")  # dots: a short run logs few points
    if evals:
        ax.plot(*zip(*evals), "o-", label=f"eval loss ({held_out})", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{record['stage'].upper()} of {record['base_model']} on {record['dataset']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
