"""Every way a run can go wrong: one clear message, a non-zero exit, nothing half-written, nothing lost.

Each case runs the real scripts on the tiny model. Faults the machine cannot produce on demand (a full
disk, CUDA out of memory) are injected into the real pipeline in-process, at the library call that
would fail. Every message a case checks is also in docs/troubleshooting.md.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, kill_when_paused, quick_args, read_until, run_script, start_script

import train_chatbot
from sft.train.checkpoints import step_of
from sft.train.metadata import METADATA_FILE

TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text()


def assert_clean_failure(result, message, documented=None, code=2):
    """The exit code, the message (documented in docs/troubleshooting.md, maybe with placeholders), and no traceback."""
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    documented = documented or message
    assert documented in TROUBLESHOOTING, f"docs/troubleshooting.md lacks {documented!r}"


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
    (["--max-length", "16"], "no training conversation fits --max-length"),
])
def test_bad_settings(tmp_path, tiny_gpt2_dir, chats_jsonl, extra, message):
    out_dir = tmp_path / "out"
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir), *extra)
    assert_clean_failure(result, message)
    assert not out_dir.exists() and leftovers(tmp_path) == []


def test_a_max_length_beyond_the_context_window_is_refused(tmp_path, tiny_gpt2_dir, chats_jsonl):
    out_dir = tmp_path / "out"
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--max-length", "1025"))
    assert_clean_failure(result, f"--max-length 1025 is longer than {tiny_gpt2_dir}'s context window",
                         "is longer than MODEL's context window")
    assert "(1024 tokens): use --max-length 1024 or less" in result.stderr
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


def test_unknown_model_without_the_hub_falls_back_to_the_kit_and_says_how_to_use_your_own(monkeypatch, kit_model_dir):
    from huggingface_hub import constants

    from sft import models

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    models.hub_available.cache_clear()
    try:
        source = models.find_base_model("no-such-org/no-such-model", offline=False)
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


def test_a_model_of_other_settings_is_replaced_only_with_overwrite(quick_run, tiny_gpt2_dir, chats_jsonl, tmp_path):
    import shutil

    out_dir = tmp_path / "chatbot-test"
    shutil.copytree(quick_run[0], out_dir)
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--seed", "3"))
    assert_clean_failure(result, "holds a model trained with other settings (seed)",
                         "holds a model trained with other settings")
    assert "Pass --overwrite to replace it" in result.stderr
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before and leftovers(tmp_path) == []


def test_output_dir_that_cannot_be_created(tmp_path, tiny_gpt2_dir, chats_jsonl):
    (tmp_path / "a-file").write_text("not a folder")
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, tmp_path / "a-file" / "out"))
    assert_clean_failure(result, "it is a file, not a folder")
    assert (tmp_path / "a-file").read_text() == "not a folder"


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write to: a read-only tmpfs when running as root (root ignores permissions),
    a folder without write permission otherwise."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_output_dir_in_a_read_only_folder(read_only_dir, tiny_gpt2_dir, chats_jsonl):
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, read_only_dir / "out"))
    assert_clean_failure(result, f"cannot write to {read_only_dir}", "cannot write to ...")
    assert "choose another --output-dir" in result.stderr and list(read_only_dir.iterdir()) == []


def fail_renames(monkeypatch, *prefixes):
    """Make Path.rename fail (as on a full or failing disk) for folders whose name starts with a prefix."""
    from pathlib import Path

    rename = Path.rename

    def failing(self, target):
        if self.name.startswith(prefixes):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)


def test_a_failed_swap_puts_the_earlier_model_back(quick_run, tiny_gpt2_dir, chats_jsonl, tmp_path, monkeypatch,
                                                   capsys):
    import shutil

    out_dir = tmp_path / "chatbot-test"
    shutil.copytree(quick_run[0], out_dir)
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    fail_renames(monkeypatch, ".chatbot-test.incomplete-")  # the new folder cannot take the earlier one's place
    result = quick_test_in_process(quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--overwrite", "--seed", "3"),
                                   capsys)
    assert_clean_failure(result, "could not save the model to", "(is the disk full or the folder read-only?)")
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before  # back where it was, unchanged
    assert leftovers(tmp_path) == []


def test_when_the_earlier_model_cannot_be_put_back_the_message_says_where_it_is(quick_run, tiny_gpt2_dir,
                                                                                 chats_jsonl, tmp_path, monkeypatch,
                                                                                 capsys):
    import shutil

    out_dir = tmp_path / "chatbot-test"
    shutil.copytree(quick_run[0], out_dir)
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    fail_renames(monkeypatch, ".chatbot-test.incomplete-", ".chatbot-test.replaced-")
    result = quick_test_in_process(quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--overwrite", "--seed", "3"),
                                   capsys)
    assert_clean_failure(result, "The earlier model is intact in")
    (retired,) = [p for p in tmp_path.iterdir() if p.name.startswith(".chatbot-test.replaced-")]
    assert str(retired) in result.stderr and f"rename it back to {out_dir}" in result.stderr
    assert {p.name: p.read_bytes() for p in retired.iterdir()} == before  # nothing lost


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


def start_quick_test(args, cwd, pause=None):
    return start_script("quick_test.py", *args, cwd=cwd, pause=pause)


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, tiny_gpt2_dir, chats_jsonl):
    out_dir = tmp_path / "out"
    args = quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--max-steps", "100000", "--logging-steps", "1000",
                      "--save-steps", "1")
    process = start_quick_test(args, tmp_path)
    third = tmp_path / "out-checkpoints" / "checkpoint-3" / "trainer_state.json"
    deadline = time.time() + 300
    while not third.is_file() and process.poll() is None and time.time() < deadline:  # a few steps, however slow
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert "checkpoint saved in" in stderr and "Run the same command again to continue" in TROUBLESHOOTING
    assert not out_dir.exists()  # no model folder that test_chatbot.py would load
    # A checkpoint every step, and only the newest two kept: the one Ctrl-C saved and the one before it.
    checkpoints = sorted((tmp_path / "out-checkpoints").glob("checkpoint-*"), key=step_of)
    assert all((c / "trainer_state.json").is_file() for c in checkpoints)
    step = step_of(checkpoints[-1])
    assert [step_of(c) for c in checkpoints] == [step - 1, step] and step > 2
    assert f"Interrupted at step {step}/100000" in stderr and str(checkpoints[-1]) in stderr

    # Other settings are refused rather than mixed with these checkpoints; the same command continues.
    resumed = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir,
                                                      "--max-steps", str(step + 2)), cwd=tmp_path)
    assert resumed.returncode == 2 and "--overwrite" in resumed.stderr  # other settings: not silently discarded
    process = start_quick_test(args, tmp_path)
    read_until(process, f"Resuming from {checkpoints[-1]}")
    read_until(process, "Training:")  # printed once the Ctrl-C handler is in place
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    later = max(step_of(c) for c in (tmp_path / "out-checkpoints").glob("checkpoint-*"))
    assert process.returncode == 130 and later > step


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, tiny_gpt2_dir, chats_jsonl):
    from safetensors.torch import load_file

    def args(out_dir):  # a learning rate high enough that a batch trained twice, or skipped, shows in the weights
        return quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--max-steps", "8", "--save-steps", "3",
                          "--learning-rate", "1e-3")

    straight = run_script("quick_test.py", *args(tmp_path / "straight"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]

    out_dir = tmp_path / "out"
    kill_after_checkpoint(args(out_dir), tmp_path, 6)  # 5 steps of 5 chats per pass: the second pass had begun
    assert not out_dir.exists()

    resumed = run_script("quick_test.py", *args(out_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from" in resumed.stdout
    whole = json.loads((tmp_path / "straight" / METADATA_FILE).read_text())["results"]
    parts = json.loads((out_dir / METADATA_FILE).read_text())["results"]
    assert parts["resumed_from_step"] == 6 and parts["optimizer_steps"] == whole["optimizer_steps"] == 8
    assert parts["tokens_processed"] == whole["tokens_processed"]  # the whole run, not just the last part
    assert parts["epochs_completed"] == whole["epochs_completed"]
    assert parts["eval_loss_before"] == whole["eval_loss_before"]
    assert not (tmp_path / "out-checkpoints").exists()  # removed once the model is saved
    # Same batches in the same order, same optimizer and random state: the same weights, up to float rounding
    # (1e-6), while training moved them by more than a thousand times that.
    base, straight, resumed = (load_file(folder / "model.safetensors")
                               for folder in (tiny_gpt2_dir, tmp_path / "straight", out_dir))
    moved = max((straight[name] - base[name]).abs().max().item() for name in straight)
    apart = max((straight[name] - resumed[name]).abs().max().item() for name in straight)
    assert apart < 1e-6 and moved > 1e-3, (apart, moved)


def test_a_second_ctrl_c_stops_at_once(tmp_path, tiny_gpt2_dir, chats_jsonl):
    out_dir = tmp_path / "out"  # both Ctrl-Cs come while step 2 runs, however fast the machine is
    process = start_quick_test(quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--max-steps", "100000"), tmp_path,
                               pause="ctrl-c-twice=1")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert "Ctrl-C: finishing this step" in stderr  # the first was acknowledged, the second did not wait
    assert "Interrupted. Nothing half-written was left behind" in stderr and "checkpoint saved in" not in stderr
    assert "A second Ctrl-C stops at once" in TROUBLESHOOTING
    assert not out_dir.exists() and leftovers(tmp_path) == []  # no checkpoint was complete: none kept


def kill_after_checkpoint(args, tmp_path, step: int) -> None:
    """Start quick_test.py and SIGKILL it once checkpoint-STEP is complete, before it can go further."""
    kill_when_paused(start_quick_test(args, tmp_path, pause=f"checkpoint={step}"), step)
    assert (tmp_path / "out-checkpoints" / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert max(step_of(c) for c in (tmp_path / "out-checkpoints").glob("checkpoint-*")) == step  # none later


def test_no_resume_starts_over(tmp_path, tiny_gpt2_dir, chats_jsonl):
    args = quick_args(tiny_gpt2_dir, chats_jsonl, tmp_path / "out", "--max-steps", "8", "--save-steps", "3")
    kill_after_checkpoint(args, tmp_path, 3)
    again = run_script("quick_test.py", *args, "--no-resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Resuming from" not in again.stdout and "eval  | step     0 |" in again.stdout  # from the base model
    results = json.loads((tmp_path / "out" / METADATA_FILE).read_text())["results"]
    assert results["resumed_from_step"] is None and results["optimizer_steps"] == 8
    assert not (tmp_path / "out-checkpoints").exists()


def test_checkpoints_of_a_run_with_other_settings_are_kept_unless_overwrite(tmp_path, tiny_gpt2_dir, chats_jsonl):
    args = quick_args(tiny_gpt2_dir, chats_jsonl, tmp_path / "out", "--max-steps", "100000", "--save-steps", "1")
    kill_after_checkpoint(args, tmp_path, 1)
    refused = run_script("quick_test.py", *args, "--seed", "3", cwd=tmp_path)
    assert_clean_failure(refused, "out-checkpoints holds checkpoints of an unfinished run with other settings (seed)",
                         "holds checkpoints of an unfinished run with other settings")
    assert "pass --overwrite to discard them" in refused.stderr
    assert (tmp_path / "out-checkpoints" / "checkpoint-1" / "trainer_state.json").is_file()  # not discarded


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_split_same_losses(quick_run, tiny_gpt2_dir, chats_jsonl, tmp_path):
    again = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, tmp_path / "again"))
    assert again.returncode == 0, again.stderr[-2000:]

    def losses(stdout):
        return [line.split("| loss ")[1].split(" ")[0] for line in stdout.splitlines() if "| loss " in line]

    first, second = (json.loads((folder / METADATA_FILE).read_text()) for folder in (quick_run[0], tmp_path / "again"))
    assert losses(again.stdout) == losses(quick_run[1].stdout) and len(losses(again.stdout)) == 2
    assert first["num_samples"] == second["num_samples"]
    for part, field in (("data", "num_eval_samples"), ("data", "trained_tokens_per_epoch"),
                        ("results", "eval_loss_before"), ("results", "eval_loss")):
        assert first[part][field] == second[part][field], field


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
    assert "error: prompt 2 is " in compare.stderr


# ----------------------------------------------------------------------------- what the flags promise


def test_offline_asks_nothing_of_the_hub(tmp_path, tiny_gpt2_dir):
    """--offline with the Hub switched on but pointing at a listener on loopback: no connection is made, and the
    kit's chats are used without the 'unreachable' banner; without --offline the same check does connect."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    connections = []

    def accept():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed at the end of the test
                return
            connections.append(1)
            connection.close()

    threading.Thread(target=accept, daemon=True).start()
    hub = {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{listener.getsockname()[1]}"}
    try:
        result = run_script("quick_test.py", "--offline", "--base-model", str(tiny_gpt2_dir), "--output-dir",
                            str(tmp_path / "out"), "--num-train-samples", "24", "--max-steps", "2", env=hub)
        offline_connections = len(connections)
        asked = subprocess.run([sys.executable, "-c", "from sft.models import hub_available; print(hub_available())"],
                               cwd=ROOT, env={**os.environ, **hub}, capture_output=True, text=True, timeout=60)
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert offline_connections == 0 and "unreachable" not in result.stdout
    metadata = json.loads((tmp_path / "out" / METADATA_FILE).read_text())
    assert metadata["data"]["source"] == "offline-kit" and metadata["base_model_source"] == "local"
    assert asked.stdout.strip() == "False" and len(connections) >= 1  # the listener does see the Hub check


REMOTE_CONFIG = """import os
from pathlib import Path

from transformers import GPT2Config

Path(os.environ["REMOTE_CODE_MARKER"]).write_text("this folder's own code ran")


class TinyConfig(GPT2Config):
    model_type = "tiny-remote"
"""
REMOTE_MODEL = """from transformers import GPT2LMHeadModel

from .configuration_tiny import TinyConfig


class TinyLM(GPT2LMHeadModel):
    config_class = TinyConfig
"""


def test_a_model_with_its_own_code_runs_only_with_trust_remote_code(tmp_path, tiny_gpt2_dir, chats_jsonl):
    import shutil

    model = tmp_path / "remote-code-model"
    shutil.copytree(tiny_gpt2_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="tiny-remote", auto_map={"AutoConfig": "configuration_tiny.TinyConfig",
                                                      "AutoModelForCausalLM": "modeling_tiny.TinyLM"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "configuration_tiny.py").write_text(REMOTE_CONFIG)
    (model / "modeling_tiny.py").write_text(REMOTE_MODEL)
    marker = tmp_path / "remote-code-ran"
    env = {"REMOTE_CODE_MARKER": str(marker), "HF_MODULES_CACHE": str(tmp_path / "modules")}

    refused = run_script("quick_test.py", *quick_args(model, chats_jsonl, tmp_path / "out"), env=env)
    assert_clean_failure(refused, "ships its own Python code, which runs only with --trust-remote-code")
    assert not marker.exists() and not (tmp_path / "out").exists()

    trusted = run_script("quick_test.py", *quick_args(model, chats_jsonl, tmp_path / "out", "--trust-remote-code"),
                         env=env)
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert marker.read_text() == "this folder's own code ran"


def test_qlora_without_bitsandbytes_says_how_to_install_it(tiny_gpt2_dir, chats_jsonl, tmp_path, monkeypatch,
                                                         capsys):
    """On a CUDA machine (the device check answers so) without the bitsandbytes package."""
    import importlib.util

    from sft import devices
    from sft.train import run

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(run, "pick_device", lambda precision="auto": devices.Device("cuda", "cuda (a GPU)", "bf16"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes"
                        else find_spec(name, *a))
    result = quick_test_in_process(quick_args(tiny_gpt2_dir, chats_jsonl, tmp_path / "out", "--qlora"), capsys)
    assert_clean_failure(result, "--qlora needs the bitsandbytes package: pip install bitsandbytes",
                         "--qlora needs the bitsandbytes package")
    assert not (tmp_path / "out").exists()
