"""Runs that cannot end well are refused at the start: one writer per output folder, enough disk, enough
memory. Each case runs the real scripts on the tiny model; its message is in docs/troubleshooting.md."""

import json
import os
import re
import subprocess

import pytest
from conftest import quick_args, read_until, run_script
from test_faults import assert_clean_failure, leftovers, quick_test_in_process, start_quick_test

from sft.train.metadata import METADATA_FILE


def test_a_second_run_into_the_same_folder_is_refused_and_the_first_finishes(tmp_path, tiny_gpt2_dir, chats_jsonl):
    out_dir, go_on = tmp_path / "out", tmp_path / "go-on"
    first = start_quick_test(quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--max-steps", "8", "--seed", "1"),
                             tmp_path, pause=f"hold={go_on}")  # it holds as training begins until go-on exists
    read_until(first, "holding")
    second = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--seed", "2"), cwd=tmp_path)
    assert_clean_failure(second, f"another run (pid {first.pid}, started ",
                         "another run (pid N, started HH:MM) is writing OUTPUT_DIR")
    assert f"is writing {out_dir}: wait for it or choose another --output-dir" in second.stderr
    go_on.touch()
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    assert metadata["settings"]["seed"] == 1 and metadata["results"]["optimizer_steps"] == 8  # the first's model
    assert leftovers(tmp_path) == []


def test_a_killed_run_leaves_no_lock_behind(tmp_path, tiny_gpt2_dir, chats_jsonl):
    out_dir = tmp_path / "out"
    killed = start_quick_test(quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--max-steps", "100000"), tmp_path)
    read_until(killed, "Training:")
    refused = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir), cwd=tmp_path)
    assert refused.returncode == 2 and f"another run (pid {killed.pid}" in refused.stderr  # the lock is held
    killed.kill()  # SIGKILL: no chance to let go of the lock itself
    killed.communicate()
    after = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir), cwd=tmp_path)
    assert after.returncode == 0, after.stderr[-2000:]


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB disk (tmpfs) when running as root; None otherwise (the free space is injected instead)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)]).returncode:
        yield None
        return
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_run_that_will_not_fit_on_the_disk_is_refused_before_training(small_disk, tmp_path, tiny_gpt2_dir,
                                                                         chats_jsonl, monkeypatch, capsys):
    if small_disk is not None:  # the tiny model's folder alone takes 14 MB
        result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, small_disk / "out"))
        folder = small_disk
    else:
        import shutil

        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=8 * 2**20))
        result = quick_test_in_process(quick_args(tiny_gpt2_dir, chats_jsonl, tmp_path / "out"), capsys)
        folder = tmp_path
    assert_clean_failure(result, "not enough disk space for this run: it writes about 0.0",
                         "not enough disk space for this run: it writes about X GB")
    assert "GB free" in result.stderr and "--lora" in result.stderr and "Training:" not in result.stdout
    assert not (folder / "out").exists() and leftovers(folder) == []


def test_the_disk_check_counts_the_checkpoints_not_only_the_model(tmp_path, monkeypatch):
    """A 1 MB model fits in 20 MB; three 10 MB checkpoints beside it do not, and the message says so."""
    import shutil

    from sft.errors import UserError
    from sft.train.preflight import check_disk_space

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=20 * 2**20))
    check_disk_space(tmp_path / "out", 2**20, 10 * 2**20, checkpoints=0)  # the model alone fits
    check_disk_space(tmp_path / "out", 2**20, 10 * 2**20, checkpoints=1)
    with pytest.raises(UserError, match=r"3 checkpoints with their optimizer state, 0\.01 GB each"):
        check_disk_space(tmp_path / "out", 2**20, 10 * 2**20, checkpoints=3)


@pytest.mark.parametrize("batch, max_length", [(2, 128), (8, 1024)])
def test_the_memory_estimate_is_within_30_percent_of_the_measured_peak(tmp_path, chat_model_dir, batch, max_length):
    """A 4-layer GPT-2 with the real 50k vocabulary, on short chats and on 80 chats of about 700 tokens."""
    chats = tmp_path / "chats.jsonl"
    words = 20 if max_length == 128 else 350
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}: " + "why " * words},
                                                      {"role": "assistant", "content": "because " * words}]}) + "\n"
                             for i in range(80)))
    result = run_script("quick_test.py", *quick_args(chat_model_dir, chats, tmp_path / "out", "--batch-size",
                                                     str(batch), "--max-length", str(max_length), "--max-steps", "3",
                                                     "--eval-fraction", "0"))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "out" / METADATA_FILE).read_text())["results"]
    estimate, measured = results["peak_memory_estimate_gib"], results["peak_memory_gib"]
    print(f"peak memory: estimated {estimate} GiB, measured {measured} GiB")
    assert abs(estimate - measured) <= 0.3 * measured, (estimate, measured)
    printed = re.search(r"Memory: about ([0-9.]+) GiB of memory at the peak", result.stdout)
    assert printed and abs(float(printed[1]) - estimate) <= 0.051, (printed, estimate)  # the metadata keeps two decimals


def test_a_run_far_over_the_memory_is_refused_with_the_remedies(tiny_gpt2_dir, chats_jsonl, tmp_path, monkeypatch,
                                                                capsys):
    from sft.train import estimates

    monkeypatch.setattr(estimates, "available_memory", lambda device_kind: 2**28)  # 256 MiB left on this machine
    out_dir = tmp_path / "out"
    result = quick_test_in_process(quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--batch-size", "4",
                                              "--gradient-accumulation-steps", "2"), capsys)
    assert_clean_failure(result, "GiB available: the system would kill it",
                         "GiB of memory at its peak and this machine has Y GiB available")
    assert "--batch-size 2 --gradient-accumulation-steps 4 (the same effective batch of 8)" in result.stderr
    assert "Training:" not in result.stdout and not out_dir.exists() and leftovers(tmp_path) == []
