"""export_gguf.py: llama.cpp's converter writes the GGUF with the chat template, transformers and llama.cpp load it
and compute what the model folder computes, the Modelfile's Go template renders our chat format, and bad input
is refused with nothing half-written left where a runtime would load it."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_script

from sft.data.chat_format import is_our_template, render
from sft.errors import UserError
from sft.eval.compare import DEFAULT_PROMPTS
from sft.export import converter, gguf, modelfile

CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And of Italy?"}]
# f16 keeps 11 significant bits: the tiny models' logits (about +-1) move by a few 1e-4. Measured: 2.7e-4 at most.
LOGIT_TOLERANCE = 2e-3


@pytest.fixture(scope="session")
def converter_cache(temporary_cache):
    """llama.cpp's converter, taken once from the pinned source into the real cache (pip downloads it the first
    time), and seen from the tests' temporary cache too."""
    temporary = os.environ["SFT_CACHE_DIR"]
    os.environ["SFT_CACHE_DIR"] = str(temporary_cache)
    try:
        ready = converter.converter_dir()
    finally:
        os.environ["SFT_CACHE_DIR"] = temporary
    link = Path(temporary) / ready.name
    if not link.exists():
        link.symlink_to(ready, target_is_directory=True)
    return ready


def export(model_dir, out_dir, *extra):
    return run_script("export_gguf.py", "--model", str(model_dir), "--output-dir", str(out_dir), *extra)


@pytest.fixture(scope="module")
def exported(chat_model_dir, converter_cache, tmp_path_factory):
    """The tiny chat GPT-2 exported at f16: (its GGUF file, the finished process)."""
    out_dir = tmp_path_factory.mktemp("export")
    result = export(chat_model_dir, out_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out_dir / f"{chat_model_dir.name}-f16.gguf", result


def nothing_half_written(folder: Path) -> bool:
    return not [path.name for path in folder.iterdir() if path.name.startswith(".") or ".incomplete" in path.name]


def tensor_types(path: Path) -> set[str]:
    return set(gguf.read_header(path)[1].values())


# --- the GGUF file -------------------------------------------------------------------------------
def test_the_gguf_carries_the_folders_chat_template_and_the_modelfile_sits_beside_it(exported, chat_model_dir):
    path, result = exported
    assert gguf.embedded_chat_template(path) == (chat_model_dir / "chat_template.jinja").read_text()
    assert path.with_suffix(".Modelfile").is_file() and nothing_half_written(path.parent)
    assert tensor_types(path) == {"F16", "F32"}  # 2-D weights in f16; norms and biases stay f32, as llama.cpp does
    assert f"ollama create {chat_model_dir.name} -f " in result.stdout and "llama-server -m " in result.stdout


def test_the_gguf_loads_back_in_transformers_with_the_folders_logits(exported, chat_model_dir, chat_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    path, _ = exported
    original = AutoModelForCausalLM.from_pretrained(chat_model_dir, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = chat_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)["input_ids"]
    with torch.no_grad():
        expected, got = original(ids).logits, loaded(ids).logits
    assert (expected - got).abs().max() < LOGIT_TOLERANCE
    assert torch.equal(expected.argmax(-1), got.argmax(-1))


def test_q8_0_comes_from_the_converter(exported, chat_model_dir, tmp_path):
    result = export(chat_model_dir, tmp_path, "--type", "q8_0")
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / f"{chat_model_dir.name}-q8_0.gguf"
    assert "Q8_0" in tensor_types(path) and gguf.embedded_chat_template(path)
    assert path.stat().st_size < 0.6 * exported[0].stat().st_size  # 8.5 bits a weight against 16


def test_q4_k_m_comes_from_llama_cpps_quantizer(chat_model_dir, converter_cache, tmp_path):
    pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python (requirements-dev.txt builds it)")
    result = export(chat_model_dir, tmp_path, "--type", "q4_k_m")
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / f"{chat_model_dir.name}-q4_k_m.gguf"
    assert "Q4_K" in tensor_types(path) and gguf.embedded_chat_template(path)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".Modelfile", ".gguf"]  # the f16 step left nothing


# --- refusals: exit status 2, a message, no GGUF -------------------------------------------------
def refused(result, *words):
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "error: " in result.stderr and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    return True


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_q4_k_m_without_llama_cpp_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if it were not installed
    with pytest.raises(UserError) as refused:
        gguf.check_type("q4_k_m")
    assert str(refused.value).startswith("--type q4_k_m uses llama.cpp's quantizer, which comes with llama-cpp-python: "
                                         "pip install llama-cpp-python==0.3.36")
    with pytest.raises(UserError, match="--type must be one of f16, q8_0, q4_k_m"):
        gguf.check_type("q2_k")


def test_lora_and_qlora_runs_are_exported_as_the_full_models_they_were_saved_as():
    assert gguf.how_it_was_saved({"settings": {"lora": False, "qlora": False}}) == gguf.how_it_was_saved(None) == ""
    assert gguf.how_it_was_saved({"settings": {"lora": True, "qlora": False}}).startswith("LoRA run: the folder's "
                                                                                          "weights have the adapter")
    assert "merged into a full-precision copy" in gguf.how_it_was_saved({"settings": {"lora": False, "qlora": True}})


def test_without_internet_the_converters_download_says_what_to_do(tmp_path, monkeypatch):
    for name, value in {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}.items():
        monkeypatch.setenv(name, value)  # pip finds no package anywhere, as on a machine without internet
    with pytest.raises(UserError, match="could not download llama.cpp's converter from PyPI") as refused:
        converter.download(tmp_path)
    assert "pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all:" in str(refused.value)
    assert "--llama-cpp-source" in str(refused.value)


def test_a_source_archive_that_is_not_the_pinned_one_is_refused(tmp_path):
    archive = tmp_path / converter.SDIST
    archive.write_bytes(b"not llama.cpp")
    with pytest.raises(UserError, match="its sha256 differs"):
        converter.extract(archive, tmp_path / "converter")
    assert not (tmp_path / "converter").exists()


def test_a_folder_without_a_model_is_refused(tmp_path):
    assert refused(export(tmp_path / "missing", tmp_path / "out"), "no model folder at", "quick_test.py")
    (tmp_path / "empty").mkdir()
    assert refused(export(tmp_path / "empty", tmp_path / "out"), "has no model", "config.json and *.safetensors")
    assert not (tmp_path / "out").exists()


def test_an_adapter_alone_is_refused_saying_what_to_pass(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    assert refused(export(adapter, tmp_path / "out"), "holds a LoRA adapter alone", "merge_and_unload")


def test_a_folder_without_a_chat_template_is_refused(tiny_gpt2_dir, tmp_path):
    assert refused(export(tiny_gpt2_dir, tmp_path), "has no chat template")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_with_its_own_code_is_not_exported(chat_model_dir, tmp_path):
    model = copy_model(chat_model_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}))
    assert refused(export(model, tmp_path / "out"), "comes with its own Python code (auto_map in its config)")
    assert not (tmp_path / "out").exists()


def test_an_unknown_architecture_is_refused(chat_model_dir, converter_cache, tmp_path):
    model = copy_model(chat_model_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["MadeUpForCausalLM"]}))
    assert refused(export(model, tmp_path / "out"), "MadeUpForCausalLM", "is not one llama.cpp's converter",
                   "GPT2LMHeadModel")
    assert not list((tmp_path / "out").glob("*.gguf"))


def test_an_existing_export_is_kept_unless_overwrite(exported, chat_model_dir):
    path, _ = exported
    before = path.read_bytes()
    path.with_suffix(".Modelfile").write_text("# edited by hand\n")
    assert refused(export(chat_model_dir, path.parent), "already exist", "--overwrite")
    assert path.read_bytes() == before and path.with_suffix(".Modelfile").read_text() == "# edited by hand\n"
    result = export(chat_model_dir, path.parent, "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert path.read_bytes() == before and "TEMPLATE" in path.with_suffix(".Modelfile").read_text()
    assert nothing_half_written(path.parent)


def test_an_existing_gguf_is_named_and_kept(chat_model_dir, tmp_path):
    model = gguf.read_model_folder(str(chat_model_dir))
    earlier = tmp_path / f"{model.path.resolve().name}-f16.gguf"
    earlier.write_bytes(b"an earlier export")
    with pytest.raises(UserError) as refused:
        gguf.output_paths(model, str(tmp_path), "f16", overwrite=False)
    assert str(refused.value).startswith(f"{earlier} already exists: pass --overwrite to replace")
    assert gguf.output_paths(model, str(tmp_path), "f16", overwrite=True)[0] == earlier
    assert earlier.read_bytes() == b"an earlier export"  # replaced only once a new one is complete


def test_a_write_that_fails_leaves_nothing_and_says_why(chat_model_dir, tmp_path, monkeypatch):
    import errno

    def disk_full(converter_dir, model_dir, outfile, gguf_type):  # the converter's output cut short
        outfile.write_bytes(b"GGUF, half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(converter, "convert", disk_full)
    target = tmp_path / "model-f16.gguf"
    with pytest.raises(UserError) as refused:
        gguf.write_gguf(gguf.read_model_folder(str(chat_model_dir)), tmp_path / "converter", "f16", target)
    assert str(refused.value) == (f"could not write {target}: {os.strerror(errno.ENOSPC)} "
                                  "(is the disk full or the folder read-only?)")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_conversion_leaves_no_gguf(chat_model_dir, converter_cache, tmp_path):
    model = copy_model(chat_model_dir, tmp_path / "model")
    (model / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    out = tmp_path / "out"
    assert refused(export(model, out), "llama.cpp's converter could not convert")
    assert not list(out.glob("*.gguf")) and nothing_half_written(out)


# --- the Ollama Modelfile ------------------------------------------------------------------------
def modelfile_commands(text: str) -> list[tuple[str, str]]:
    """(command, value) as Ollama's parser reads them: a value in \"\"\" or " quotes may span lines, and a line
    starting with # is a comment (Ollama reads no comment after a value)."""
    pattern = re.compile(r'^(FROM|TEMPLATE|PARAMETER \w+) ("""(.*?)"""|"(.*?)"|(\S+))$', re.MULTILINE | re.DOTALL)
    found = [(m[1], next(v for v in m.groups()[2:] if v is not None)) for m in pattern.finditer(text)]
    rest = pattern.sub("", text)
    assert all(line.startswith("#") or not line.strip() for line in rest.splitlines()), rest
    return found


GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Renders a template as Ollama does for templates that use .Messages: Go's text/template, missing keys empty.
func main() {
	source, _ := os.ReadFile(os.Args[1])
	data, _ := os.ReadFile(os.Args[2])
	var messages []*Message
	if err := json.Unmarshal(data, &messages); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(string(source)))
	values := map[string]any{"System": "", "Messages": messages, "Response": ""}
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		panic(err)
	}
}
"""


def go_render(template: str, messages: list[dict], folder: Path) -> str:
    """The template rendered by Go's own text/template (Debian's golang-go; .ci/run installs it)."""
    if not shutil.which("go"):
        pytest.skip("no Go here to render the Modelfile's template: apt-get install golang-go")
    (folder / "render.go").write_text(GO_RENDER)
    (folder / "template.txt").write_text(template)
    (folder / "messages.json").write_text(json.dumps(messages))
    env = {**os.environ, "GOCACHE": str(folder / "gocache"), "GO111MODULE": "off", "GOFLAGS": ""}
    result = subprocess.run(["go", "run", "render.go", "template.txt", "messages.json"], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def without_bos(text: str, tokenizer) -> str:
    """Our template's text less its BOS token, which llama.cpp and Ollama put in front themselves (Gemma)."""
    return text.removeprefix(tokenizer.bos_token) if tokenizer.chat_template.startswith("{{- bos_token }}") else text


def check_modelfile(path: Path, tokenizer, tmp_path: Path) -> None:
    """The Modelfile's TEMPLATE, rendered by Go, is our chat template's text for a two-turn chat with a system
    message (less the BOS); its stop words are the starts of the turns and end-of-text."""
    commands = modelfile_commands(path.read_text())
    values = dict(commands)
    assert values["FROM"] == f"./{path.with_suffix('.gguf').name}"
    rendered = render(tokenizer, CHAT, add_generation_prompt=True)
    assert go_render(values["TEMPLATE"], CHAT, tmp_path) == without_bos(rendered, tokenizer)
    # Ending with an answer, the chat continues that answer: it stays open, with no end-of-text after it.
    assert go_render(values["TEMPLATE"], CHAT[:3], tmp_path) == without_bos(
        render(tokenizer, CHAT[:3]).removesuffix(tokenizer.eos_token), tokenizer)
    stops = [value for command, value in commands if command == "PARAMETER stop"]
    assert stops == ["\nUser:", "\nAssistant:", "\nSystem:", tokenizer.eos_token]
    assert rendered.count("\nUser:") == 2 and rendered.endswith("\nAssistant:")  # where the user's turns begin
    assert values["PARAMETER temperature"] == "0" and values["PARAMETER repeat_penalty"] == "1"


def test_the_modelfile_renders_our_chat_format_in_go(exported, chat_tokenizer, tmp_path):
    path, _ = exported
    check_modelfile(path.with_suffix(".Modelfile"), chat_tokenizer, tmp_path)
    assert dict(modelfile_commands(path.with_suffix(".Modelfile").read_text()))["PARAMETER num_ctx"] == "1024"


def test_only_our_template_is_written_as_a_go_template(chat_tokenizer):
    assert is_our_template(chat_tokenizer.chat_template)
    assert not is_our_template("{% for message in messages %}{{ message['content'] }}{% endfor %}")


def test_sampling_settings_of_the_folder_reach_the_modelfile(chat_model_dir):
    model = gguf.read_model_folder(str(chat_model_dir))
    model.generation = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}
    values = dict(modelfile_commands(modelfile.modelfile(model, Path("x-f16.gguf"))))
    assert values["PARAMETER temperature"] == "0.7" and values["PARAMETER top_p"] == "0.9"
    assert values["PARAMETER repeat_penalty"] == "1.1" and "PARAMETER top_k" not in values


# --- a real llama.cpp runtime --------------------------------------------------------------------
@contextlib.contextmanager
def llama(path: Path, n_ctx: int = 1024):
    """The GGUF file loaded by llama.cpp, through llama-cpp-python (built from source by requirements-dev.txt)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python (requirements-dev.txt)")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=2, verbose=False, seed=0)
    try:
        yield llm
    finally:
        llm.close()


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]


def chat_prompt_of_llama_cpp(llm, messages: list[dict]) -> tuple[str, list[int]]:
    """The prompt llama.cpp's chat handling builds from the GGUF's embedded template (create_chat_completion),
    caught where it is tokenized, and its tokens."""
    seen, tokenize = [], llm.tokenize

    def spy(text: bytes, *args, **kwargs):
        tokens = tokenize(text, *args, **kwargs)
        seen.append((text.decode(), tokens))
        return tokens

    llm.tokenize = spy
    try:
        llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0)
    finally:
        llm.tokenize = tokenize
    return seen[0]


def greedy_in_llama_cpp(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    tokens = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        if token == llm.token_eos() or len(tokens) == n:
            break
        tokens.append(token)
    return tokens


def greedy_in_transformers(model, tokenizer, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy tokens, and at each step the margin between the best and the second-best logit."""
    import torch

    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, output_scores=True,
                         return_dict_in_generate=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
    tokens = [t for t in out.sequences[0, len(ids):].tolist() if t != tokenizer.eos_token_id]
    margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
    return tokens, margins


def test_llama_cpp_reads_the_template_and_computes_the_folders_logits(exported, chat_model_dir, chat_tokenizer):
    import numpy
    import torch
    from transformers import AutoModelForCausalLM

    path, _ = exported
    ids = chat_ids(chat_tokenizer, CHAT)
    with llama(path) as llm:
        prompt, tokens = chat_prompt_of_llama_cpp(llm, CHAT)
        assert prompt == render(chat_tokenizer, CHAT, add_generation_prompt=True) and tokens == ids
        llm.reset()
        llm.eval(ids)
        got = llm.scores[:len(ids)].copy()
    model = AutoModelForCausalLM.from_pretrained(chat_model_dir, dtype=torch.float32)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    assert numpy.abs(got - expected).max() < LOGIT_TOLERANCE  # measured: 4.4e-4


# --- the kit's Gemma 3 ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kit_chat_model(kit_model_dir, tmp_path_factory):
    """The kit's Gemma 3 270M base with our chat template (<bos>User: ...), as a training run saves its tokenizer."""
    from transformers import AutoTokenizer

    from sft.data.chat_format import install_chat_template

    folder = tmp_path_factory.mktemp("kit") / "kit-chat"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (folder / name).symlink_to(kit_model_dir / name)
    tokenizer = AutoTokenizer.from_pretrained(kit_model_dir)
    install_chat_template(tokenizer)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


@pytest.fixture(scope="module")
def kit_exported(kit_chat_model, converter_cache, tmp_path_factory):
    """The kit's Gemma 3 with our template, exported at f16: its GGUF file."""
    folder, tokenizer = kit_chat_model
    out_dir = tmp_path_factory.mktemp("kit-export")
    result = export(folder, out_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    path = out_dir / "kit-chat-f16.gguf"
    assert gguf.embedded_chat_template(path) == tokenizer.chat_template
    return path


@pytest.mark.slow
def test_the_kits_modelfile_renders_our_chat_format_less_the_bos(kit_exported, kit_chat_model, tmp_path):
    check_modelfile(kit_exported.with_suffix(".Modelfile"), kit_chat_model[1], tmp_path)


@pytest.mark.slow
def test_the_kits_gemma_3_answers_in_llama_cpp_as_in_transformers(kit_exported, kit_chat_model):
    import torch
    from transformers import AutoModelForCausalLM

    folder, tokenizer = kit_chat_model
    with llama(kit_exported, n_ctx=512) as llm:
        prompt, tokens = chat_prompt_of_llama_cpp(llm, CHAT)
        assert prompt == render(tokenizer, CHAT, add_generation_prompt=True)  # <bos>System: ...\nAssistant:
        assert tokens == chat_ids(tokenizer, CHAT)

        # The default compare prompts, greedy, 32 tokens: llama.cpp (f16 weights) against transformers (the
        # folder's fp32 weights). Where they part, f16 rounding must explain it: the two best tokens were within
        # 0.1 of each other in transformers. (Measured: no parting, on all seven.)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        for text in DEFAULT_PROMPTS:
            ids = chat_ids(tokenizer, [{"role": "user", "content": text}])
            expected, margins = greedy_in_transformers(model, tokenizer, ids, 32)
            got = greedy_in_llama_cpp(llm, ids, 32)
            if got != expected:
                parted = next(i for i, (a, b) in enumerate(zip(expected + [-1], got + [-1])) if a != b)
                assert parted < len(margins) and margins[parted] < 0.1, (text, parted, tokenizer.decode(expected),
                                                                         tokenizer.decode(got))
