"""training_metadata.json: what was trained, from what, with what result, on what machine.

    base_model, dataset, num_samples, num_epochs,    the tutorial's six fields (num_samples: chats trained
    learning_rate, model_parameters                  on, after any too long for max_length were dropped)
    stage                                            "sft" (train_chatbot.py), "dpo" (train_dpo.py) or
                                                     "grpo" (train_grpo.py)
    base_model_source, base_model_path               "hub", "local" or "offline-kit"; what from_pretrained loaded
    data        where the chats came from, how many were held out, dropped or cut, trained tokens per epoch
    lora        rank, alpha, layers, trainable parameters (None: every weight was trained)
    results     steps, epochs, losses (mean cross-entropy per trained token; DPO: its loss per pair, and the
                held-out preference accuracy and rewards), tokens, times
    environment device, precision, processes, library versions, date
    settings    every setting of the run, as on the command line (used to recognise the same run)

describe() builds it from the run's parts (describe_dpo(): a DPO run's, whose "base" is its SFT model, with
beta, the pairs and the held-out preference accuracy; describe_grpo(): a GRPO run's, with the held-out form
instructions followed before and after); save.py writes it; test_chatbot.py reads it back to
find the base model a fine-tuned folder came from.
"""

import datetime
import importlib.metadata
import json
import time
from collections import Counter
from pathlib import Path

from sft.train import checkpoints
from sft.train.estimates import GIB, peak_memory
from sft.train.lora import base_parameters, lora_summary

METADATA_FILE = "training_metadata.json"
LIBRARIES = ("torch", "transformers", "trl", "datasets", "accelerate", "peft")


def describe(run, trainer, source, chats, token_stats: dict) -> dict:
    s = run.settings
    return {
        "base_model": source.name,
        "dataset": chats.name,
        "num_samples": len(trainer.train_dataset),
        "num_epochs": s.num_epochs,
        "learning_rate": s.learning_rate,
        "model_parameters": base_parameters(trainer.model),
        "stage": "sft",
        "base_model_source": source.kind,
        "base_model_path": source.path,
        "data": {"source": chats.source, "split": chats.split, "format": chats.format,
                 "num_eval_samples": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
                 "conversations_dropped": token_stats["dropped"],  # first answer did not fit max_length
                 "conversations_truncated": token_stats["truncated"],  # later turns cut at a turn boundary
                 "trained_tokens_per_epoch": token_stats["trained_tokens"],
                 "kit_mix": chats.mix},  # the kit's training chats made multi-turn, long, or asking for a form
        "lora": lora_summary(trainer.model, s),
        "results": results(run, trainer),
        "environment": environment(run),
        "settings": vars(s),
    }


def describe_dpo(run, trainer, sft, pairs) -> dict:
    """The DPO run's record: the same fields, its stage "dpo", the SFT model it started from (its "base", so that
    test_chatbot.py compares SFT with DPO), beta, the pairs and DPO's own results."""
    record = continued_from(sft, run, trainer, "dpo", pairs.name)
    record["data"] = {"source": pairs.source, "split": pairs.split,
                      "format": "preference pairs (prompt, chosen, rejected)",
                      "num_eval_samples": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
                      "rejected_from": pairs.rejected_from, "pairs_dropped": pairs.dropped}
    record["results"].update(dpo_results(trainer.state.log_history))
    return record


def describe_grpo(run, trainer, sft, chats, held_out: dict) -> dict:
    """The GRPO run's record, like DPO's: its stage "grpo", the model it started from as its "base", the prompts,
    and the held-out form instructions followed before and after (`held_out`: {"before": ..., "after": ...})."""
    record = continued_from(sft, run, trainer, "grpo", chats.name)
    record["data"] = {"source": chats.source, "split": chats.split, "format": chats.format,
                      "prompts": "requests with a form instruction (sft/data/constraints.py)",
                      "instructions": dict(sorted(Counter(trainer.train_dataset["constraint"]).items())),
                      "num_eval_samples": held_out["before"]["requests"]}
    history = [entry for entry in trainer.state.log_history if "reward" in entry]
    record["results"].update({"final_train_reward": history[-1]["reward"] if history else None,
                              "held_out_followed_before": held_out["before"]["followed"],
                              "held_out_followed": held_out["after"]["followed"],
                              "held_out_clean_stop_before": held_out["before"]["clean_stop_rate"],
                              "held_out_clean_stop": held_out["after"]["clean_stop_rate"]})
    return record


def continued_from(sft, run, trainer, stage: str, dataset: str) -> dict:
    """The fields of a run that continues from a model folder (DPO, GRPO): that folder is its "base"."""
    s, sft_record = run.settings, read_metadata(sft.path) or {}
    return {
        "base_model": sft.name,  # the starting folder: compare and eval put the result beside it
        "dataset": dataset,
        "num_samples": len(trainer.train_dataset),  # pairs or prompts trained on
        "num_epochs": s.num_epochs,
        "learning_rate": s.learning_rate,
        "model_parameters": base_parameters(trainer.model),
        "stage": stage,
        "base_model_source": "local",
        "base_model_path": str(Path(sft.path).resolve()),
        "sft_model": {"path": str(Path(sft.path).resolve()), "base_model": sft_record.get("base_model"),
                      "dataset": sft_record.get("dataset"), "stage": sft_record.get("stage")},
        "beta": s.beta,
        "lora": lora_summary(trainer.model, s),
        "results": results(run, trainer),
        "environment": environment(run),
        "settings": vars(s),
    }


def dpo_results(history: list[dict]) -> dict:
    """Preference accuracy and rewards on the held-out pairs after training (before it, the model is its own
    reference: every reward is 0, the loss ln 2)."""
    evals = [entry for entry in history if "eval_rewards/accuracies" in entry]
    after = evals[-1] if len(evals) > 1 else {}
    return {"eval_preference_accuracy": after.get("eval_rewards/accuracies"),
            "eval_reward_margin": after.get("eval_rewards/margins"),
            "eval_reward_chosen": after.get("eval_rewards/chosen"),
            "eval_reward_rejected": after.get("eval_rewards/rejected")}


def environment(run) -> dict:
    return {"device": run.device.name, "precision": run.device.precision, "num_processes": run.processes,
            "library_versions": {name: importlib.metadata.version(name) for name in LIBRARIES},
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def results(run, trainer) -> dict:
    """What training did, from the Trainer's state and log; after a resume, the whole run's totals."""
    state, history = trainer.state, trainer.state.log_history
    evals = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    tokens = int(state.num_input_tokens_seen)
    tokens_before = 0 if run.resume_from is None else json.loads(
        (run.resume_from / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0)
    train_seconds = next((entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry), 0.0)
    return {
        "optimizer_steps": state.global_step,
        "effective_batch_size": run.settings.effective_batch_size * run.processes,  # chats per step, all processes
        "epochs_completed": round(state.epoch or 0, 4),
        "final_train_loss": next((entry["loss"] for entry in reversed(history) if "loss" in entry), None),
        "eval_loss_before": evals[0] if evals else None,
        "eval_loss": evals[-1] if len(evals) > 1 else None,
        "tokens_processed": tokens,  # non-padding tokens through the model while training (the whole run)
        "resumed_from_step": checkpoints.step_of(run.resume_from) if run.resume_from else None,
        "train_seconds": round(train_seconds, 2),  # of this session (since the resume, if any)
        "tokens_per_second": round((tokens - tokens_before) / train_seconds, 1) if train_seconds else 0.0,
        "total_seconds": round(time.time() - run.started, 2),  # loading, tokenizing, training (not saving)
        "peak_memory_gib": round(peak_memory(run.device.kind) / GIB, 2),  # since the measured batch (CUDA: on the GPU)
        "peak_memory_estimate_gib": round(run.peak_estimate / GIB, 2) if run.peak_estimate else None,
    }


def write_metadata(record: dict, folder: Path) -> None:
    (Path(folder) / METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_metadata(folder: Path) -> dict | None:
    """The metadata of a model folder this project wrote, or None if it has none (or it is unreadable)."""
    try:
        return json.loads((Path(folder) / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
