"""Every way a run can go wrong: one clear message, a non-zero exit, nothing half-written, nothing lost.

Each case runs the real scripts on the tiny model. Faults the machine cannot produce on demand (a full
disk, CUDA out of memory) are injected into the real pipeline in-process, at the library call that
would fail. Every message a case checks is also in the README's Troubleshooting table.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import train_chatbot
from conftest import ROOT, quick_args, run_script
from sft.metadata import METADATA_FILE

TROUBLESHOOTING = (ROOT / "README.md").read_text().split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]


def assert_clean_failure(result, message, documented=None, code=2):
    """The exit code, the message (documented in the README, maybe with placeholders), and no traceback."""
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    documented = documented or message
    assert documented in TROUBLESHOOTING, f"README Troubleshooting lacks {documented!r}"


def leftovers(folder):
    """Anything a run could have left beside its output folder: staging, replaced or checkpoint folders."""
    return sorted(p.name for p in folder.iterdir() if ".incomplete-" in p.name or ".replaced-" in p.name
                  or p.name.endswith("-checkpoints"))


def quick_test_in_process(argv, capsys):
    """quick_test.py's settings through train_chatbot.main in this process, so a fault can be injected."""
    import quick_test

    with pytest.raises(SystemExit) as stopped:
        train_chatbot.main(argv, NUM_TRAIN_SAMPLES=quick_test.NUM_TRAIN_SAMPLES, MAX_STEPS=quick_test.MAX_STEPS,
                           BATCH_SIZE=quick_test.BATCH_SIZE,
                           GRADIENT_ACCUMULATION_STEPS=quick_test.GRADIENT_ACCUMULATION_STEPS)
    return subprocess.CompletedProcess(argv, stopped.value.code, *capsys.readouterr())


# ----------------------------------------------------------------------------- settings and data


@pytest.mark.parametrize("extra, message", [
    (["--num-train-samples", "0"], "--num-train-samples must be at least 1"),
    (["--num-epochs", "0", "--max-steps", "0"], "--num-epochs must be above 0"),
    (["--learning-rate", "-1"], "--learning-rate must be between 0 and 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps must be at least 1"),
    (["--max-length", "4096"], "is longer than"),
    (["--max-length", "16"], "no training conversation fits --max-length"),
])
def test_bad_settings(tmp_path, tiny_gpt2_dir, chats_jsonl, extra, message):
    out_dir = tmp_path / "out"
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir), *extra)
    assert_clean_failure(result, message)
    assert not out_dir.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("name, content, message, documented", [
    ("missing.jsonl", None, "missing.jsonl does not exist", "does not exist: check the path"),
    ("empty.jsonl", "", "empty.jsonl is empty", "is empty"),
    ("notes.txt", "some notes\n", "unsupported file type '.txt'", "unsupported file type"),
    ("bad.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"},
                                           {"role": "assistant", "content": 3}]}) + "\n", "bad.jsonl: record 0 (", "record N ("),
    ("columns.jsonl", json.dumps({"question": "a", "reply": "b"}) + "\n", "match no supported format", None),
    ("no-answers.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n",
     "no conversation with an assistant answer", None),
])
def test_bad_data(tmp_path, tiny_gpt2_dir, name, content, message, documented):
    data = tmp_path / name
    if content is not None:
        data.write_text(content)
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, data, tmp_path / "out"))
    assert_clean_failure(result, message, documented)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_missing_base_model_folder(tmp_path, chats_jsonl):
    result = run_script("quick_test.py", *quick_args(tmp_path / "no-model", chats_jsonl, tmp_path / "out"))
    assert_clean_failure(result, "no-model does not exist: check the path", "does not exist: check the path")


def test_unknown_model_without_the_hub_falls_back_to_the_kit_and_says_how_to_use_your_own(monkeypatch):
    from huggingface_hub import constants

    from sft import models

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    models.hub_available.cache_clear()
    try:
        source = models.resolve_base_model("no-such-org/no-such-model", offline=False)
    finally:
        models.hub_available.cache_clear()
    assert source.kind == "offline-kit" and "--base-model" in source.notice
    assert "The Hub is unreachable" in TROUBLESHOOTING


# ----------------------------------------------------------------------------- where the model goes


def test_a_folder_not_written_by_us_is_never_replaced(tmp_path, tiny_gpt2_dir, chats_jsonl):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, precious, "--overwrite"))
    assert_clean_failure(result, "not a model folder written by these scripts")
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_output_dir_that_cannot_be_created(tmp_path, tiny_gpt2_dir, chats_jsonl):
    (tmp_path / "a-file").write_text("not a folder")
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, tmp_path / "a-file" / "out"))
    assert_clean_failure(result, "it is a file, not a folder")
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_disk_full_when_saving_keeps_the_previous_model(quick_run, tiny_gpt2_dir, chats_jsonl, tmp_path,
                                                        monkeypatch, capsys):
    import shutil

    import transformers.modeling_utils

    out_dir = tmp_path / "chatbot-test"
    shutil.copytree(quick_run[0], out_dir)
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    result = quick_test_in_process(quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--overwrite", "--seed", "3"),
                                   capsys)
    assert_clean_failure(result, "(is the disk full or the folder read-only?)")
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before  # the earlier model, untouched
    assert leftovers(tmp_path) == []


def test_disk_full_when_checkpointing_says_how_to_resume(tiny_gpt2_dir, chats_jsonl, tmp_path, monkeypatch,
                                                         capsys):
    import transformers.modeling_utils

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    out_dir = tmp_path / "out"
    result = quick_test_in_process(quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--save-steps", "2"), capsys)
    assert_clean_failure(result, "(is the disk full?)")
    assert "No space left on device" in result.stderr
    assert not out_dir.exists() and leftovers(tmp_path) == []  # the torn checkpoint is not kept


def test_out_of_memory_names_the_remedies_with_the_current_values(tiny_gpt2_dir, chats_jsonl, tmp_path,
                                                                   monkeypatch, capsys):
    import torch
    from trl import SFTTrainer

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "training_step", out_of_memory)
    out_dir = tmp_path / "out"
    result = quick_test_in_process(quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--batch-size", "4",
                                              "--gradient-accumulation-steps", "2", "--max-length", "512"), capsys)
    assert_clean_failure(result, "out of memory on")
    assert ("--batch-size 2 --gradient-accumulation-steps 4 (the same effective batch of 8)" in result.stderr
            and "--max-length 256" in result.stderr and "--gradient-checkpointing" in result.stderr)
    assert not out_dir.exists() and leftovers(tmp_path) == []


def test_compile_without_a_cpp_compiler_says_to_run_without_it(tiny_gpt2_dir, chats_jsonl, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))  # what torch.compile finds on a bare CPU box
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # no kernels compiled earlier
    out_dir = tmp_path / "out"
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--compile"))
    assert_clean_failure(result, "--compile: torch.compile failed on cpu", "--compile: torch.compile failed")
    assert "Run without --compile" in result.stderr and "C++ compiler" in result.stderr
    assert not out_dir.exists() and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- interruption and resume


def start_quick_test(args, cwd):
    return subprocess.Popen([sys.executable, str(ROOT / "quick_test.py"), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, tiny_gpt2_dir, chats_jsonl):
    out_dir = tmp_path / "out"
    args = quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--max-steps", "100000", "--logging-steps", "1000")
    process = start_quick_test(args, tmp_path)
    for line in process.stdout:  # wait until training has really started
        if line.startswith("Training:"):
            break
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert "checkpoint saved in" in stderr and "Run the same command again to continue" in TROUBLESHOOTING
    assert not out_dir.exists()  # no model folder that test_chatbot.py would load
    checkpoints = sorted((tmp_path / "out-checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").is_file()
    step = int(checkpoints[0].name.split("-")[1])
    assert f"Interrupted at step {step}/100000" in stderr

    # The same command, with fewer steps to go, continues from there.
    resumed = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir,
                                                      "--max-steps", str(step + 2)), cwd=tmp_path)
    assert resumed.returncode == 2 and "--overwrite" in resumed.stderr  # other settings: not silently discarded
    args = quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--max-steps", "100000", "--logging-steps", "1000")
    process = start_quick_test(args, tmp_path)
    for line in process.stdout:
        if line.startswith("Resuming from"):
            assert checkpoints[0].name in line
        if line.startswith("Training:"):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    later = int(sorted((tmp_path / "out-checkpoints").glob("checkpoint-*"))[-1].name.split("-")[1])
    assert process.returncode == 130 and later > step


def test_killed_run_resumes_to_the_same_result_as_an_uninterrupted_one(tmp_path, tiny_gpt2_dir, chats_jsonl):
    def args(out_dir):
        return quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--max-steps", "8", "--save-steps", "3")

    straight = run_script("quick_test.py", *args(tmp_path / "straight"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]

    out_dir = tmp_path / "out"
    process = start_quick_test(args(out_dir), tmp_path)
    checkpoint = tmp_path / "out-checkpoints" / "checkpoint-3"
    deadline = time.time() + 300
    while not (checkpoint / "trainer_state.json").is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.kill()  # SIGKILL: no chance to clean up
    process.communicate()
    assert (checkpoint / "trainer_state.json").is_file() and not out_dir.exists()

    resumed = run_script("quick_test.py", *args(out_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from" in resumed.stdout
    whole = json.loads((tmp_path / "straight" / METADATA_FILE).read_text())
    parts = json.loads((out_dir / METADATA_FILE).read_text())
    assert parts["resumed_from_step"] in (3, 6) and parts["optimizer_steps"] == whole["optimizer_steps"] == 8
    assert parts["tokens_processed"] == whole["tokens_processed"]  # the whole run, not just the last part
    assert parts["epochs_completed"] == whole["epochs_completed"]
    assert parts["eval_loss_before"] == whole["eval_loss_before"]
    assert parts["eval_loss"] == pytest.approx(whole["eval_loss"], abs=1e-4)  # same data order and random state
    assert not (tmp_path / "out-checkpoints").exists()  # removed once the model is saved


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_split_same_losses(quick_run, tiny_gpt2_dir, chats_jsonl, tmp_path):
    again = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, tmp_path / "again"))
    assert again.returncode == 0, again.stderr[-2000:]

    def losses(stdout):
        return [line.split("| loss ")[1].split(" ")[0] for line in stdout.splitlines() if "| loss " in line]

    first = json.loads((quick_run[0] / METADATA_FILE).read_text())
    second = json.loads((tmp_path / "again" / METADATA_FILE).read_text())
    assert losses(again.stdout) == losses(quick_run[1].stdout) and len(losses(again.stdout)) == 2
    for field in ("num_samples", "num_eval_samples", "trained_tokens_per_epoch", "eval_loss_before", "eval_loss"):
        assert first[field] == second[field], field


# ----------------------------------------------------------------------------- test_chatbot.py


def test_chatbot_missing_or_broken_model_folder(tmp_path):
    missing = run_script("test_chatbot.py", "--mode", "interactive", "--model", str(tmp_path / "nope"))
    assert_clean_failure(missing, "no fine-tuned model at")
    assert "quick_test.py" in missing.stderr
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text("{}")
    assert_clean_failure(run_script("test_chatbot.py", "-p", "hi", "--model", str(incomplete)),
                         "is not a complete model folder")


def test_chatbot_corrupt_weights(tmp_path, chat_model_dir):
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(chat_model_dir, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download or copy cut short
    assert_clean_failure(run_script("test_chatbot.py", "-p", "hi", "--model", str(corrupt)),
                         "could not load model")


def test_chatbot_prompt_longer_than_the_context_window(tmp_path, chat_model_dir, quick_run):
    long_text = "word " * 1100  # GPT-2's window is 1,024 tokens
    one_shot = run_script("test_chatbot.py", "-p", long_text, "--model", str(chat_model_dir))
    assert_clean_failure(one_shot, "tokens long; with 150 kept for the answer", "tokens long; with N kept")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\n" + long_text + "\n")
    compare = run_script("test_chatbot.py", "--mode", "compare", "--model", str(quick_run[0]),
                         "--prompts", str(prompts))
    assert_clean_failure(compare, "tokens long; with 150 kept for the answer", "tokens long; with N kept")
    assert "prompt 2 is" in compare.stderr
