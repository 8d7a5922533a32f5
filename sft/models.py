"""The model: find the base model (a local folder, the Hub or its cache, or the offline kit) and load it.

Also finds the folders the other scripts load: a fine-tuned model, and the base it was trained from.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

from sft.console import banner
from sft.errors import UserError, first_line


@functools.cache
def hub_available() -> bool:
    """Whether the Hugging Face Hub can be used: not switched off (HF_HUB_OFFLINE) and answering."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=5)
        return True
    except Exception:  # no DNS, no route, proxy refusal, timeout: all mean "offline" here
        return False


def stay_offline() -> None:
    """--offline: the libraries never ask the Hub either (their offline mode, as with HF_HUB_OFFLINE=1), not even
    for TRL's usage telemetry when a trainer starts."""
    import os

    import datasets
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"  # for worker processes started later
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    hub_available.cache_clear()


@dataclass
class ModelSource:
    requested: str  # what the user asked for
    path: str  # what from_pretrained is given
    kind: str  # "local", "hub" or "offline-kit"
    notice: str = ""  # why the offline kit stands in, if it does

    @property
    def name(self) -> str:
        """The model's own name: the kit's Hub id when the kit stands in."""
        from sft.offline_kit import BASE_MODEL_ID

        return BASE_MODEL_ID if self.kind == "offline-kit" else self.requested


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # not a valid repo id
        return False


def find_base_model(requested: str, offline: bool) -> ModelSource:
    """Where to load `requested` from; prints a banner when the offline kit stands in for it."""
    from sft import offline_kit

    path = Path(requested).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"{path} is not a model folder (it has no config.json)")
        return ModelSource(requested, str(path), "local")
    if requested.startswith((".", "/", "~")):
        raise UserError(f"base model folder {requested} does not exist: check the path, or pass a Hub model name")
    if offline:
        return ModelSource(requested, str(offline_kit.model_dir()), "offline-kit")
    if _in_hub_cache(requested) or hub_available():
        return ModelSource(requested, requested, "hub")
    notice = (f"The Hub is unreachable and {requested} is not in the local cache: using the offline kit's "
              "Gemma 3 270M base model instead. (Pass a local model folder with --base-model to use your own.)")
    banner("OFFLINE: " + notice)
    return ModelSource(requested, str(offline_kit.model_dir()), "offline-kit", notice)


def _hub_kwargs(source: ModelSource, trust_remote_code: bool) -> dict:
    return {"trust_remote_code": trust_remote_code,
            "local_files_only": source.kind == "hub" and not hub_available()}


def _load_error(source: ModelSource, error: Exception) -> UserError:
    if "trust_remote_code" in str(error):
        return UserError(f"{source.requested} ships its own Python code, which runs only with --trust-remote-code: "
                         "pass it if you trust that code (read it first), or choose another model")
    hint = ("check the name on https://huggingface.co/models" if source.kind == "hub"
            else "the folder may be incomplete or corrupt")
    return UserError(f"could not load model {source.requested!r}: {first_line(error)} ({hint}; "
                     "without the Hub, --offline uses the offline starter kit)")


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.path, **_hub_kwargs(source, trust_remote_code))
    except Exception as error:
        raise _load_error(source, error) from None


def dropout_overrides(config, dropout: float) -> dict:
    """from_pretrained keyword arguments that set every dropout probability of `config` to `dropout`."""
    return {name: dropout for name, value in vars(config).items()
            if isinstance(value, float) and ("dropout" in name or name.endswith("_pdrop"))}


# GPT-2's "gelu_new" is GELU's tanh approximation written out as six tensor operations; PyTorch's fused
# kernel computes the same function (within 3e-7) about 6x faster, forward and backward.
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def fused_activation_overrides(config) -> dict:
    """from_pretrained keyword arguments that swap an activation written out op by op for its fused twin."""
    return {name: FUSED_ACTIVATIONS[value] for name, value in vars(config).items()
            if name in ("activation_function", "hidden_act", "hidden_activation") and value in FUSED_ACTIVATIONS}


def load_model(source: ModelSource, dtype=None, trust_remote_code: bool = False, dropout: float | None = None,
               quantization=None):
    """The model, with its activation function fused where an identical fused one exists; with `dropout`,
    every dropout probability in its config replaced (None keeps the model's); with `quantization`
    (four_bit_config), its linear layers held in 4 bits."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = _hub_kwargs(source, trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(source.path, **kwargs)
        kwargs.update(fused_activation_overrides(config))
        if dropout is not None:
            kwargs.update(dropout_overrides(config, dropout))
        return AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, quantization_config=quantization,
                                                    **kwargs)
    except Exception as error:
        raise _load_error(source, error) from None


def four_bit_config(compute_dtype):
    """QLoRA's recipe: NF4 weights, their scales quantized too, matmuls in `compute_dtype`."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_model_for_training(source: ModelSource, settings, device):
    """The base model in fp32 (mixed precision computes in bf16/fp16); with QLoRA, its linear layers in 4 bits
    and the rest in the compute precision, as in the QLoRA paper. Prints what was loaded, where."""
    import torch

    model = load_model(source, trust_remote_code=settings.trust_remote_code, dropout=settings.dropout,
                       **({"dtype": device.compute_dtype, "quantization": four_bit_config(device.compute_dtype)}
                          if settings.qlora else {"dtype": torch.float32}))
    window = context_window(model)
    if window and settings.max_length > window:
        raise UserError(f"--max-length {settings.max_length} is longer than {source.name}'s context window "
                        f"({window} tokens): use --max-length {window} or less")
    print(f"\nModel: {source.name} [{source.kind}], {model.num_parameters() / 1e6:.1f}M parameters, on "
          f"{device.name}, {device.precision}: {device.why}.")
    if settings.freeze_embeddings and not settings.uses_lora:
        freeze_embeddings(model)
    if device.kind == "cpu":
        print("No GPU found: training on the CPU. It works, but slowly; a CUDA GPU is 10-100x faster.")
    return model


def freeze_embeddings(model) -> None:
    """Leave the token embedding as it is (and the output head, when the model ties it to the embedding).
    Gemma 3 270M's is 168M of its 268M weights: its gradient and AdamW's update over it cost half of each
    training step on a CPU (BENCHMARKS.md)."""
    embedding = model.get_input_embeddings().weight
    embedding.requires_grad_(False)
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embedding
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"Embedding frozen{' (and the output head tied to it)' if tied else ''}: {embedding.numel() / 1e6:.1f}M "
          f"weights kept as they are, {trainable / 1e6:.1f}M trained (--no-freeze-embeddings trains them all).")


def context_window(model) -> int | None:
    """Longest sequence the model was built for (GPT-2: 1,024 tokens)."""
    config = model.config.get_text_config()
    for name in ("n_positions", "max_position_embeddings"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def finetuned_source(folder: str, flag: str = "--model") -> ModelSource:
    """A model folder written by the training scripts, checked before anything heavy is loaded."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"no fine-tuned model at {folder}: train one first with python quick_test.py "
                        "(writes ./chatbot-test) or python train_chatbot.py (writes ./chatbot-finetuned), "
                        f"or pass {flag} DIR")
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise UserError(f"{folder} is not a complete model folder (config.json and *.safetensors expected); "
                        "train again with the script that wrote it")
    return ModelSource(str(path), str(path), "local")


def base_source_from_metadata(metadata: dict) -> ModelSource:
    """The base model a fine-tuned folder came from, from the same place it was loaded then."""
    from sft import offline_kit

    requested, kind, path = metadata["base_model"], metadata["base_model_source"], metadata["base_model_path"]
    if kind == "offline-kit":
        return ModelSource(requested, str(offline_kit.model_dir()), kind)
    if kind == "local" and not Path(path).is_dir():
        raise UserError(f"the base model folder {path} (recorded in training_metadata.json) no longer exists")
    return ModelSource(requested, path, kind)
