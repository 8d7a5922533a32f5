"""The GGUF file: llama.cpp's converter run on a model folder, quantized if asked, checked, renamed into place.

    chatbot-test/chatbot-test-f16.gguf         weights, tokenizer and chat template in one file
    chatbot-test/chatbot-test-f16.Modelfile    for Ollama (modelfile.py)

f16 and q8_0 are written by the converter; q4_k_m by llama.cpp's quantizer (which llama-cpp-python
brings) from the f16 file. The file is written under a hidden name beside its own and renamed only
once complete and checked, so a runtime never loads a half-written GGUF, and an earlier export
survives a failed one. The chat template embedded in it must be the folder's, character for character.
"""

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sft.errors import UserError
from sft.export import converter
from sft.train.metadata import read_metadata

TYPES = {  # --type: how each is written and what it costs
    "f16": "llama.cpp's converter: 16-bit weights (2 bytes each)",
    "q8_0": "llama.cpp's converter: 8-bit blocks (about 1.06 bytes per weight)",
    "q4_k_m": "llama.cpp's quantizer on the f16 file (llama-cpp-python): 4- to 6-bit blocks where rows are a multiple "
              "of 256 wide, 5- or 8-bit elsewhere (Gemma 3 270M's 640)",
}
TESTED = {"GPT2LMHeadModel": "GPT-2", "Gemma3ForCausalLM": "Gemma 3"}  # exported and run in llama.cpp by the tests


# --- the model folder ----------------------------------------------------------------------------
@dataclass
class ModelFolder:
    path: Path
    architecture: str  # config.json's, e.g. GPT2LMHeadModel
    chat_template: str
    eos_token: str  # closes every answer
    context_window: int | None
    generation: dict  # generation_config.json
    saved_as: str  # how a LoRA or QLoRA run was saved, or ""


def read_model_folder(folder: str) -> ModelFolder:
    """A full model with its chat template, checked before anything heavy is run; refused with the reason."""
    path = Path(folder).expanduser()
    refuse_what_is_not_a_model(path, folder)
    config = json.loads((path / "config.json").read_text())
    refuse_remote_code(path, config)
    tokenizer = load_tokenizer(path)
    if not tokenizer.chat_template:
        raise UserError(f"{folder} has no chat template (chat_template.jinja): a runtime would answer as a base "
                        "model does, writing turns for the user too. Export a model trained by quick_test.py, "
                        "train_chatbot.py or train_dpo.py")
    generation = path / "generation_config.json"
    return ModelFolder(path, (config.get("architectures") or ["(none given)"])[0], tokenizer.chat_template,
                       tokenizer.eos_token, config.get("n_positions") or config.get("max_position_embeddings"),
                       json.loads(generation.read_text()) if generation.is_file() else {},
                       how_it_was_saved(read_metadata(path)))


def refuse_what_is_not_a_model(path: Path, folder: str) -> None:
    """No folder, an adapter alone, or no weights: each refused, saying what to pass instead."""
    if not path.is_dir():
        raise UserError(f"no model folder at {folder}: train one first with python quick_test.py (writes "
                        "./chatbot-test) or python train_chatbot.py (writes ./chatbot-finetuned), or pass --model DIR")
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise UserError(f"{folder} holds a LoRA adapter alone, not a model. This project's scripts save LoRA and "
                        "QLoRA runs merged into a full model, the adapter alone in its adapter/ folder: pass the "
                        "folder above it. For another adapter, merge it first with peft (merge_and_unload(), then "
                        "save_pretrained)")
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise UserError(f"{folder} has no model: config.json and *.safetensors expected, as quick_test.py, "
                        "train_chatbot.py and train_dpo.py write them (this project never loads pickle weights)")


def refuse_remote_code(path: Path, config: dict) -> None:
    """This project never runs a model folder's own Python code, and llama.cpp's converter would: it loads
    tokenizers with trust_remote_code=True. A folder that ships code (auto_map) is not exported."""
    tokenizer_config = path / "tokenizer_config.json"
    if "auto_map" in config or (tokenizer_config.is_file() and "auto_map" in json.loads(tokenizer_config.read_text())):
        raise UserError(f"{path} comes with its own Python code (auto_map in its config): llama.cpp's converter "
                        "would run it, so this project does not export it")


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))  # never trust_remote_code


def how_it_was_saved(metadata: dict | None) -> str:
    """Said before exporting a LoRA or QLoRA run: what the folder's weights are."""
    settings = (metadata or {}).get("settings", {})
    if settings.get("qlora"):
        return ("QLoRA run: the adapter was merged into a full-precision copy of the base model when the run saved "
                "(4-bit weights are never exported); that full model is what is exported")
    if settings.get("lora"):
        return "LoRA run: the folder's weights have the adapter merged in; that full model is what is exported"
    return ""


def check_architecture(model: ModelFolder, supported: set[str]) -> None:
    if model.architecture not in supported:
        tested = ", ".join(f"{name} ({arch})" for arch, name in TESTED.items())
        raise UserError(f"{model.path}'s architecture, {model.architecture}, is not one llama.cpp's converter "
                        f"(llama-cpp-python {converter.LLAMA_CPP_PYTHON}) writes as GGUF. It knows "
                        f"{len(supported)} others; tested with this project: {tested}")
    if model.architecture not in TESTED:
        print(f"Note: {model.architecture} is converted by llama.cpp's converter but was not tested with this "
              "project; check its answers in llama.cpp.", flush=True)


# --- where the files go --------------------------------------------------------------------------
def check_type(gguf_type: str) -> None:
    """An unknown --type, or q4_k_m without llama.cpp's quantizer, is refused before anything is converted."""
    if gguf_type not in TYPES:
        raise UserError(f"--type must be one of {', '.join(TYPES)}, not {gguf_type!r}")
    if gguf_type == "q4_k_m":
        llama_cpp_library()


def output_paths(model: ModelFolder, output_dir: str, gguf_type: str, overwrite: bool) -> tuple[Path, Path]:
    """(the GGUF file, its Modelfile): in the model folder unless --output-dir; refused if there unless --overwrite."""
    folder = Path(output_dir).expanduser() if output_dir else model.path
    stem = f"{model.path.resolve().name}-{gguf_type}"
    paths = folder / f"{stem}.gguf", folder / f"{stem}.Modelfile"
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise UserError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: pass "
                        "--overwrite to replace, or --output-dir to write elsewhere")
    folder.mkdir(parents=True, exist_ok=True)
    return paths


def aside(target: Path) -> Path:
    """Where `target` is written before it is complete: hidden, and not named *.gguf, so no runtime lists it."""
    return target.with_name(f".{target.name}.incomplete-{os.getpid()}")


# --- writing the GGUF ----------------------------------------------------------------------------
def write_gguf(model: ModelFolder, converter_dir: Path, gguf_type: str, target: Path) -> None:
    """Convert (and quantize), check the embedded chat template, then rename into place."""
    staging, f16 = aside(target), aside(target.with_suffix(".f16"))
    try:
        with converter_input(model) as folder:
            converter.convert(converter_dir, folder, f16 if gguf_type == "q4_k_m" else staging,
                              "f16" if gguf_type == "q4_k_m" else gguf_type)
        if gguf_type == "q4_k_m":
            quantize(f16, staging)
        check_chat_template(staging, model.chat_template)
        os.replace(staging, target)  # atomic: the earlier file, or the new one, never half of one
    except OSError as error:
        raise UserError(f"could not write {target}: {error.strerror or error} (is the disk full or the folder "
                        "read-only?)") from None
    finally:
        for path in (staging, f16):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def converter_input(model: ModelFolder):
    """The folder the converter reads: the model folder itself, or, for a GPT-2 config without n_ctx, a copy of
    it made of links with n_ctx added. llama.cpp's GPT-2 converter reads n_ctx, which configs that transformers 5
    writes for a new GPT-2 leave out (the Hub's gpt2 has it); it is the same number as n_positions."""
    config = json.loads((model.path / "config.json").read_text())
    if model.architecture != "GPT2LMHeadModel" or "n_ctx" in config:
        yield model.path
        return
    with tempfile.TemporaryDirectory() as temporary:
        view = Path(temporary) / model.path.resolve().name  # the converter names the model after its folder
        view.mkdir()
        for item in model.path.iterdir():
            if item.name != "config.json" and not item.name.endswith(".gguf"):
                (view / item.name).symlink_to(item.resolve())
        (view / "config.json").write_text(json.dumps({**config, "n_ctx": config["n_positions"]}, indent=2))
        yield view


def llama_cpp_library():
    """llama.cpp's library, through llama-cpp-python: its quantizer writes q4_k_m."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"--type q4_k_m uses llama.cpp's quantizer, which comes with llama-cpp-python: pip install "
                        f"llama-cpp-python=={converter.LLAMA_CPP_PYTHON} (it builds llama.cpp from source: cmake "
                        "and a C++ compiler; docs/export.md). f16 and q8_0 need nothing more") from None
    return llama_cpp


def quantize(f16: Path, target: Path) -> None:
    """q4_k_m: llama.cpp's own quantizer (llama_model_quantize) on the f16 file."""
    import ctypes

    llama_cpp = llama_cpp_library()
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # not llama.cpp's line per tensor
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise UserError(f"llama.cpp's quantizer could not write q4_k_m from {f16.name} (its messages are above)")


def write_text(target: Path, text: str) -> None:
    """A small file (the Modelfile), written aside and renamed into place like the GGUF."""
    staging = aside(target)
    try:
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, target)
    except OSError as error:
        raise UserError(f"could not write {target}: {error.strerror or error}") from None
    finally:
        staging.unlink(missing_ok=True)


# --- reading a GGUF file's header ----------------------------------------------------------------
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # value types
_STRING, _ARRAY = 8, 9


def read_header(path: Path) -> tuple[dict, dict[str, str]]:
    """(metadata but its arrays, each tensor's type name) of a GGUF file. gguf's GGUFReader decodes every array
    too: the vocabulary alone kept it busy 62 s for Gemma 3 (262,144 tokens, 514,906 merges); this reads 0.4 s."""
    import mmap
    import struct

    from gguf import GGMLQuantizationType

    def number(form: str, at: int):
        return struct.unpack_from("<" + form, data, at)[0], at + struct.calcsize(form)

    def string(at: int) -> tuple[str, int]:
        length, at = number("Q", at)
        return data[at:at + length].decode("utf-8", errors="replace"), at + length

    def value(kind: int, at: int):
        if kind == _STRING:
            return string(at)
        if kind != _ARRAY:
            return number(_SCALARS[kind], at)
        item, at = number("I", at)
        count, at = number("Q", at)
        for _ in range(count if item in (_STRING, _ARRAY) else 0):
            _, at = value(item, at)
        return None, at + (0 if item in (_STRING, _ARRAY) else count * struct.calcsize(_SCALARS[item]))

    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF":
            raise UserError(f"{path} is not a GGUF file")
        tensors, at = number("Q", 8)
        fields, at = number("Q", at)
        metadata, types = {}, {}
        for _ in range(fields):
            key, at = string(at)
            kind, at = number("I", at)
            metadata[key], at = value(kind, at)
        for _ in range(tensors):
            name, at = string(at)
            dims, at = number("I", at)
            kind, at = number("I", at + 8 * dims)
            types[name], at = GGMLQuantizationType(kind).name, at + 8  # then the data's offset
    return {key: item for key, item in metadata.items() if item is not None}, types


def embedded_chat_template(path: Path) -> str | None:
    """The chat template a GGUF file carries (tokenizer.chat_template), as llama.cpp and LM Studio read it."""
    return read_header(path)[0].get("tokenizer.chat_template")


def check_chat_template(path: Path, expected: str) -> None:
    if embedded_chat_template(path) != expected:
        raise UserError(f"the GGUF file llama.cpp's converter wrote does not carry {path.parent}'s chat template "
                        "as it is; nothing was written")


def file_size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
