"""Find and load a base model and its tokenizer: a local folder, the Hub (or its cache), or the offline kit."""

import functools
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, first_line


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


@dataclass
class ModelSource:
    requested: str  # what the user asked for
    path: str  # what from_pretrained is given
    kind: str  # "local", "hub" or "offline-kit"
    notice: str = ""  # why the offline kit stands in, if it does


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # not a valid repo id
        return False


def resolve_base_model(requested: str, offline: bool) -> ModelSource:
    from . import offline_kit

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
    return ModelSource(requested, str(offline_kit.model_dir()), "offline-kit", notice)


def _hub_kwargs(source: ModelSource, trust_remote_code: bool) -> dict:
    return {"trust_remote_code": trust_remote_code,
            "local_files_only": source.kind == "hub" and not hub_available()}


def _load_error(source: ModelSource, error: Exception) -> UserError:
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


def qlora_unavailable(device: str) -> str | None:
    """Why --qlora cannot run here, or None: bitsandbytes' 4-bit training is made for NVIDIA GPUs."""
    import importlib.util

    if not device.startswith("cuda"):
        return (f"--qlora loads the base model in 4 bits with bitsandbytes, which needs an NVIDIA GPU (CUDA); "
                f"this machine trains on {device}. Use --lora instead: the same adapters on the full-precision "
                "model.")
    if importlib.util.find_spec("bitsandbytes") is None:
        return "--qlora needs the bitsandbytes package: pip install bitsandbytes"
    return None


def four_bit_config(compute_dtype):
    """QLoRA's recipe: NF4 weights, their scales quantized too, matmuls in `compute_dtype`."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def merge_adapter(peft_model, full_precision_base=None):
    """The model with its LoRA adapter merged into the weights.

    After QLoRA the base in memory is 4-bit, and merging there would round every merged weight to 4 bits:
    the adapter is merged into `full_precision_base`, a freshly loaded copy of the base, instead.
    """
    if full_precision_base is None:
        return peft_model.merge_and_unload()
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    fresh = get_peft_model(full_precision_base, peft_model.peft_config["default"])
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(peft_model))
    return fresh.merge_and_unload()


def best_device() -> str:
    """"cuda", "mps" or "cpu": the fastest device this machine has."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def context_window(model) -> int | None:
    """Longest sequence the model was built for (GPT-2: 1,024 tokens)."""
    config = model.config.get_text_config()
    for name in ("n_positions", "max_position_embeddings"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def finetuned_source(folder: str) -> ModelSource:
    """A model folder written by the training scripts, checked before anything heavy is loaded."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"no fine-tuned model at {folder}: train one first with python quick_test.py "
                        "(writes ./chatbot-test) or python train_chatbot.py (writes ./chatbot-finetuned), "
                        "or pass --model DIR")
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise UserError(f"{folder} is not a complete model folder (config.json and *.safetensors expected); "
                        "train again with the script that wrote it")
    return ModelSource(str(path), str(path), "local")


def base_source_from_metadata(metadata: dict) -> ModelSource:
    """The base model a fine-tuned folder came from, from the same place it was loaded then."""
    from . import offline_kit

    requested, kind, path = metadata["base_model"], metadata["base_model_source"], metadata["base_model_path"]
    if kind == "offline-kit":
        return ModelSource(requested, str(offline_kit.model_dir()), kind)
    if kind == "local" and not Path(path).is_dir():
        raise UserError(f"the base model folder {path} (recorded in training_metadata.json) no longer exists")
    return ModelSource(requested, path, kind)
