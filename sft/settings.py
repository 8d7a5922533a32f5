"""Settings: the constants at the top of train_chatbot.py (and train_dpo.py, train_grpo.py), and their flags.

Every setting is written once, as a constant with a comment:

    NUM_EPOCHS = 3.0  # passes over the training chats

and becomes the flag --num-epochs (typed by its default, with the comment as its --help) and the
attribute `settings.num_epochs`. quick_test.py and demo_train.py only change some defaults.
"""

import argparse
import io
import tokenize
from pathlib import Path
from types import SimpleNamespace

from sft.devices import PRECISIONS
from sft.errors import UserError

# Settings that change how a run is controlled or logged, or where it is written, not what it learns: a
# re-run or a resume may change them and still count as the same run.
RUN_CONTROLS = ("output_dir", "overwrite", "resume", "save_steps", "logging_steps", "report_to", "compile")


class Settings(SimpleNamespace):
    """The run's settings as attributes (settings.batch_size), plus two derived values."""

    # What a script without these settings gets (train_dpo.py: TRL switches dropout off; no --compile there;
    # export_gguf.py trains nothing).
    compile = False
    dropout = None  # None: keep the model's own dropout
    freeze_embeddings = False
    lora = qlora = False
    max_length = 0  # train_grpo.py: prompts are kept whole; MAX_COMPLETION_LENGTH caps the answers
    precision = "auto"

    @property
    def uses_lora(self) -> bool:
        return self.lora or self.qlora

    @property
    def kit_mix(self) -> dict:
        """The shares of the kit's training chats made multi-turn, long, or asking for a form."""
        return {"multi_turn": self.multi_turn_share, "long": self.long_answer_share,
                "constraints": self.constraint_share}

    @property
    def effective_batch_size(self) -> int:
        """Conversations per optimizer step in one process."""
        return self.batch_size * self.gradient_accumulation_steps


def constants(namespace: dict) -> dict:
    """The UPPER_CASE names of a script's namespace that hold a plain value (bool, number, text): its settings."""
    return {name: value for name, value in namespace.items()
            if name.isupper() and not name.startswith("_") and isinstance(value, (bool, int, float, str))}


def from_constants(constants_: dict, **changes) -> Settings:
    """Settings from a script's constants, with some changed by their lower-case name (for code and tests)."""
    return Settings(**{**{name.lower(): value for name, value in constants_.items()}, **changes})


def help_texts(source: Path) -> dict[str, str]:
    """Each constant's comment on its own line of `source` (NAME = value  # comment): its --help text."""
    texts, line_start = {}, None
    for token in tokenize.generate_tokens(io.StringIO(source.read_text(encoding="utf-8")).readline):
        if token.type == tokenize.NAME and token.start[1] == 0 and token.string.isupper():
            line_start = token.string
        elif token.type == tokenize.COMMENT and line_start:
            texts[line_start] = token.string.lstrip("# ").strip()
        if token.type in (tokenize.NEWLINE, tokenize.NL):
            line_start = None
    return texts


def parse(constants_: dict, argv: list[str] | None, description: str, source: Path,
          presets: dict[str, dict] | None = None) -> Settings:
    """Settings from the script's constants, each overridden by its flag; refused if out of range.
    `presets`: a boolean setting's name -> constants it changes when on (--quick), except the flags typed."""
    helps = help_texts(source)
    settings = Settings(**vars(flag_parser(constants_, helps, description).parse_args(argv)))
    typed = vars(flag_parser(constants_, helps, description, argparse.SUPPRESS).parse_args(argv))  # only those typed
    for switch, changes in (presets or {}).items():
        if getattr(settings, switch):
            vars(settings).update({name.lower(): value for name, value in changes.items() if name.lower() not in typed})
    if settings.uses_lora and "learning_rate" not in typed:
        settings.learning_rate = settings.lora_learning_rate  # adapters need a larger step (BENCHMARKS.md: sweep)
    validate(settings)
    return settings


def flag_parser(constants_: dict, helps: dict, description: str, default=None) -> argparse.ArgumentParser:
    """One flag per constant, typed by its value; `default` replaces every default (SUPPRESS: flags typed only)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in constants_.items():
        flag, help_text = "--" + name.lower().replace("_", "-"), f"{helps.get(name, '')} (default: {value})"
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text,
                                default=value if default is None else default)
        else:
            parser.add_argument(flag, type=type(value), help=help_text, default=value if default is None else default)
    return parser


# Each setting's range, for the scripts that have it: (setting, test, message naming the flag and the fix).
CHECKS = [
    ("num_train_samples", lambda s: s.num_train_samples >= 1, "--num-train-samples must be at least 1"),
    ("num_pairs", lambda s: s.num_pairs >= 1, "--num-pairs must be at least 1"),
    ("eval_pairs", lambda s: s.eval_pairs >= 0, "--eval-pairs must be 0 or more"),
    ("num_epochs", lambda s: s.num_epochs > 0 or s.max_steps > 0, "--num-epochs must be above 0 (or set --max-steps)"),
    ("learning_rate", lambda s: 0 < s.learning_rate < 1,
     "--learning-rate must be between 0 and 1 (typical: 1e-5 to 1e-4 for SFT, 1e-7 to 1e-5 for DPO)"),
    ("lora_learning_rate", lambda s: 0 < s.lora_learning_rate < 1,
     "--lora-learning-rate must be between 0 and 1 (typical: 1e-4 to 5e-4 for SFT, 1e-5 to 1e-4 for DPO)"),
    ("beta", lambda s: s.beta > 0 or ("num_generations" in vars(s) and s.beta == 0),
     "--beta must be above 0 (typical: 0.01 to 0.5 for DPO; GRPO: 0.001 to 0.1, or 0 for no KL penalty)"),
    ("num_prompts", lambda s: s.num_prompts >= 1 and s.eval_prompts >= 1,
     "--num-prompts and --eval-prompts must be at least 1"),
    ("num_generations", lambda s: s.num_generations >= 2,
     "--num-generations must be at least 2: each answer is compared with the others sampled for its prompt"),
    ("num_generations", lambda s: s.effective_batch_size % s.num_generations == 0,
     "--batch-size x --gradient-accumulation-steps must be a multiple of --num-generations (whole groups per step)"),
    ("max_completion_length", lambda s: s.max_completion_length >= 1, "--max-completion-length must be at least 1"),
    ("temperature", lambda s: s.temperature > 0, "--temperature must be above 0 (GRPO samples its answers)"),
    ("clean_stop_reward", lambda s: s.clean_stop_reward >= 0, "--clean-stop-reward must be 0 or more"),
    ("batch_size", lambda s: s.batch_size >= 1, "--batch-size must be at least 1"),
    ("gradient_accumulation_steps", lambda s: s.gradient_accumulation_steps >= 1,
     "--gradient-accumulation-steps must be at least 1"),
    ("max_length", lambda s: s.max_length >= 16, "--max-length must be at least 16 tokens"),
    ("dropout", lambda s: 0 <= s.dropout < 1, "--dropout must be in [0, 1)"),
    ("lora_rank", lambda s: s.lora_rank >= 1 and s.lora_alpha >= 1, "--lora-rank and --lora-alpha must be at least 1"),
    ("lora_dropout", lambda s: 0 <= s.lora_dropout < 1, "--lora-dropout must be in [0, 1)"),
    ("lora_target_modules", lambda s: bool(s.lora_target_modules.strip(" ,")),
     "--lora-target-modules must name at least one layer (or all-linear)"),
    ("constraint_share", lambda s: 0 <= s.constraint_share <= 1, "--constraint-share must be in [0, 1]"),
    ("multi_turn_share", lambda s: 0 <= s.multi_turn_share <= 1, "--multi-turn-share must be in [0, 1]"),
    ("long_answer_share", lambda s: 0 <= s.long_answer_share <= 1, "--long-answer-share must be in [0, 1]"),
    ("eval_fraction", lambda s: 0 <= s.eval_fraction < 0.5, "--eval-fraction must be in [0, 0.5)"),
    ("rejected_max_new_tokens", lambda s: s.rejected_max_new_tokens >= 1,
     "--rejected-max-new-tokens must be at least 1"),
    ("rejected_temperature", lambda s: s.rejected_temperature >= 0,
     "--rejected-temperature must be 0 (greedy) or above"),
    ("logging_steps", lambda s: s.logging_steps >= 1, "--logging-steps must be at least 1"),
    ("save_steps", lambda s: s.save_steps >= 1, "--save-steps must be at least 1"),
    ("precision", lambda s: s.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
    ("report_to", lambda s: s.report_to in ("none", "tensorboard", "wandb"),
     "--report-to must be none, tensorboard or wandb"),
    ("sft_model", lambda s: Path(s.sft_model).expanduser().resolve() != Path(s.output_dir).expanduser().resolve(),
     "--output-dir must not be the --sft-model folder: the run writes its model beside the one it reads"),
]


def validate(s: Settings) -> None:
    """Refuse values that cannot work, naming the flag and how to fix it."""
    for name, ok, message in CHECKS:
        if name in vars(s) and not ok(s):  # the script has this setting
            raise UserError(message)


def differing(previous: dict, settings: dict) -> list[str]:
    """Names of the settings that make two runs different (run controls such as --save-steps do not)."""
    return sorted(name for name in settings if name not in RUN_CONTROLS and previous.get(name) != settings[name])
