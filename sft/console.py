"""What a run prints around its own report lines: banners, and the libraries' chatter kept out of the way."""

RULE = "=" * 78


def banner(text: str) -> None:
    print(f"\n{RULE}\n{text}\n{RULE}", flush=True)


def quiet_library_chatter() -> None:
    """Hide progress bars and warnings that say nothing a learner can act on."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()  # tokenized data is small; our own lines say what happened
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated")
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator")
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*Conv1D")  # PEFT handles GPT-2's Conv1D itself
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated")
