"""training_metadata.json: what was trained, from what, how, and with what result.

This dataclass is the one definition of the file's schema; train.py fills it, save.py writes it, and
test_chatbot.py reads it back to find the base model a fine-tuned folder came from.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

METADATA_FILE = "training_metadata.json"


@dataclass
class TrainingMetadata:
    # The tutorial's fields
    base_model: str  # as requested (Hub name or path)
    dataset: str
    num_samples: int  # conversations trained on (after dropping those too long)
    num_epochs: float
    learning_rate: float
    model_parameters: int
    # Where the model and data came from: "hub", "local" or "offline-kit"
    base_model_source: str
    base_model_path: str  # what from_pretrained loaded (a Hub name or a folder)
    dataset_source: str
    dataset_split: str
    dataset_format: str
    num_eval_samples: int
    conversations_dropped: int  # first answer did not fit max_length
    conversations_truncated: int  # later turns cut at a turn boundary
    # Hyperparameters
    max_length: int
    batch_size: int
    gradient_accumulation_steps: int
    effective_batch_size: int  # conversations per optimizer step, over all processes
    num_processes: int  # training processes (GPUs) under accelerate launch; 1 otherwise
    max_steps: int
    seed: int
    lora: dict | None  # rank, alpha, target modules, trainable parameters; None: every weight was trained
    # Results (losses are mean cross-entropy per trained token, in nats)
    optimizer_steps: int
    epochs_completed: float
    final_train_loss: float | None
    eval_loss_before: float | None
    eval_loss: float | None
    trained_tokens_per_epoch: int  # assistant tokens + their end-of-text tokens in the training set
    tokens_processed: int  # non-padding tokens through the model while training (the whole run)
    resumed_from_step: int | None  # the checkpoint this run continued from, if it was interrupted before
    train_seconds: float  # of this session (since the resume, if any)
    tokens_per_second: float  # of this session
    total_seconds: float  # the whole script: loading, tokenizing, training, saving
    # Machine and software
    device: str
    precision: str
    library_versions: dict
    created_at: str
    settings: dict  # every setting of the run, as on the command line (used to recognise the same run)


def write_metadata(metadata: TrainingMetadata, folder: Path) -> None:
    (Path(folder) / METADATA_FILE).write_text(json.dumps(dataclasses.asdict(metadata), indent=2) + "\n")


def read_metadata(folder: Path) -> dict | None:
    """The metadata of a model folder this project wrote, or None if it has none (or it is unreadable)."""
    try:
        return json.loads((Path(folder) / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
