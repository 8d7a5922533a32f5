"""The settings of one training run, and the command-line flags that set them.

The defaults are not here: they are the module-level constants at the top of train_chatbot.py
(BASE_MODEL, NUM_EPOCHS, ...), which a learner edits. Each constant NAME becomes the flag --name
(lower case, '-' for '_') and the field `name` of TrainConfig.
"""

import argparse
import dataclasses
from dataclasses import dataclass, field

from .errors import UserError


def _setting(help_text: str):
    return field(metadata={"help": help_text})


@dataclass
class TrainConfig:
    base_model: str = _setting("Hub name or local folder of the base (pre-trained) causal language model")
    dataset_name: str = _setting(
        "Hub dataset name, or a local .jsonl/.json/.parquet/.csv file or save_to_disk folder"
    )
    dataset_split: str = _setting("split to read from a Hub dataset or a saved DatasetDict")
    num_train_samples: int = _setting("conversations to train on (the evaluation split is taken besides these)")
    output_dir: str = _setting("where the fine-tuned model folder is written")
    num_epochs: float = _setting("passes over the training conversations")
    max_steps: int = _setting("if > 0: stop after this many optimizer steps (overrides --num-epochs)")
    learning_rate: float = _setting("peak learning rate (AdamW), decayed linearly to 0")
    batch_size: int = _setting("conversations per forward pass on each device")
    gradient_accumulation_steps: int = _setting("forward passes summed into one optimizer step")
    max_length: int = _setting("longest training sequence in tokens; longer chats are cut at a turn boundary")
    dropout: float = _setting("dropout probability while training (0 = none, as modern LLMs; GPT-2 was pretrained "
                              "with 0.1)")
    eval_fraction: float = _setting("share of conversations held out for evaluation (at least 32 when possible)")
    seed: int = _setting("random seed for sampling, the held-out split, and initialisation")
    logging_steps: int = _setting("print a log line every this many optimizer steps")
    save_steps: int = _setting("save a resumable checkpoint every this many optimizer steps (the last two are kept)")
    resume: bool = _setting("continue an interrupted run with the same settings from its newest checkpoint")
    lora: bool = _setting("train LoRA adapters on every linear layer instead of all weights (saved merged, and as "
                          "an adapter in OUTPUT_DIR/adapter)")
    qlora: bool = _setting("LoRA on the base model loaded in 4 bits (bitsandbytes, NVIDIA GPU only): the least memory")
    lora_rank: int = _setting("LoRA rank r: the size of each adapter")
    lora_alpha: int = _setting("LoRA alpha: adapters are scaled by alpha / r")
    lora_dropout: float = _setting("dropout on the adapters' input while training")
    lora_target_modules: str = _setting("layers that get adapters: 'all-linear' (every linear layer but the output "
                                        "head) or names separated by commas, e.g. c_attn or q_proj,v_proj")
    report_to: str = _setting("also log to 'tensorboard' (./runs/OUTPUT_DIR name) or 'wandb', installed separately; "
                              "'none': the console and loss_curve.png only")
    gradient_checkpointing: bool = _setting("recompute activations in the backward pass: less memory, a little "
                                            "slower (BENCHMARKS.md)")
    compile: bool = _setting("torch.compile each of the model's blocks, at the first steps (BENCHMARKS.md: slower "
                             "on a CPU, where it also needs a C++ compiler)")
    offline: bool = _setting("use the offline starter kit (Gemma 3 270M + chatterbot corpus) without asking the Hub")
    overwrite: bool = _setting("replace OUTPUT_DIR even if it holds a model trained with other settings")
    trust_remote_code: bool = _setting("allow a model repository to run its own Python code (off by default)")

    # Settings that change how a run is controlled or logged, not what it learns: a re-run or a resume
    # may change them and still count as the same run.
    RUN_CONTROLS = ("overwrite", "resume", "save_steps", "logging_steps", "report_to", "compile")

    @property
    def uses_lora(self) -> bool:
        return self.lora or self.qlora

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    def validate(self) -> None:
        """Refuse values that cannot work, naming the flag and how to fix it."""
        checks = [
            (self.num_train_samples >= 1, "--num-train-samples must be at least 1"),
            (self.num_epochs > 0 or self.max_steps > 0, "--num-epochs must be above 0 (or set --max-steps)"),
            (0 < self.learning_rate < 1, "--learning-rate must be between 0 and 1 (typical: 1e-5 to 1e-4)"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.gradient_accumulation_steps >= 1, "--gradient-accumulation-steps must be at least 1"),
            (self.max_length >= 16, "--max-length must be at least 16 tokens"),
            (0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
            (self.lora_rank >= 1 and self.lora_alpha >= 1, "--lora-rank and --lora-alpha must be at least 1"),
            (0 <= self.lora_dropout < 1, "--lora-dropout must be in [0, 1)"),
            (bool(self.lora_target_modules.strip(" ,")), "--lora-target-modules must name at least one layer "
                                                         "(or all-linear)"),
            (0 <= self.eval_fraction < 0.5, "--eval-fraction must be in [0, 0.5)"),
            (self.logging_steps >= 1, "--logging-steps must be at least 1"),
            (self.save_steps >= 1, "--save-steps must be at least 1"),
            (self.report_to in ("none", "tensorboard", "wandb"), "--report-to must be none, tensorboard or wandb"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def config_from_constants(constants: dict, **changes) -> TrainConfig:
    """A TrainConfig from a script's CONSTANTS (e.g. train_chatbot.py's), with some fields changed."""
    values = {setting.name: constants[setting.name.upper()] for setting in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**values, **changes})


def parse_config(defaults: dict, argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """Build a TrainConfig from the script's CONSTANTS (`defaults`) overridden by command-line flags."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for setting in dataclasses.fields(TrainConfig):
        default = defaults[setting.name.upper()]
        help_text = f"{setting.metadata['help']} (default: {default})"
        if setting.type is bool:
            parser.add_argument(
                flag_name(setting.name), action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        else:
            parser.add_argument(flag_name(setting.name), type=setting.type, default=default, help=help_text)
    config = TrainConfig(**vars(parser.parse_args(argv)))
    config.validate()
    return config
