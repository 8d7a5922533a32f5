"""Several processes under `accelerate launch`: two CPU processes train together (DDP over gloo) exactly
as one process with the same global batch does, and only the main process prints and saves."""

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, run_script

from sft.train.metadata import METADATA_FILE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LAUNCH_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
PORT_TAKEN = "EADDRINUSE"  # another program took the free port between free_port() and the launch: try another


def launch_command(config: str, processes: int, script: str, *args: str, pause: str | None = None) -> list[str]:
    paused = [str(ROOT / "tests" / "paused_run.py"), pause] if pause else []
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / config),
            "--num_processes", str(processes), "--main_process_port", str(free_port()), *paused, str(ROOT / script),
            *args]


def accelerate_launch(config: str, processes: int, script: str, *args: str) -> subprocess.CompletedProcess:
    for _ in range(3):
        result = subprocess.run(launch_command(config, processes, script, *args), cwd=ROOT, env=LAUNCH_ENV,
                                capture_output=True, text=True, timeout=600)
        if PORT_TAKEN not in result.stdout + result.stderr:
            return result
    return result


def settings(model_dir, data_file, out_dir, batch_size):
    # 20 chats: 2 batches of 10 per epoch in one process, 2 of 5 in each of two: the same chats per step.
    return ["--base-model", str(model_dir), "--dataset-name", str(data_file), "--output-dir", str(out_dir),
            "--num-train-samples", "20", "--max-steps", "4", "--logging-steps", "1", "--learning-rate", "1e-3",
            "--batch-size", str(batch_size), "--precision", "fp32"]  # weights compared to 1e-4: fp32 on any CPU


@pytest.fixture(scope="module")
def one_and_two_processes(tiny_gpt2_dir, chats_jsonl, tmp_path_factory):
    """quick_test.py with a batch of 10 in one process, and with 5 in each of two under accelerate launch;
    and, for scale, one process with a batch of 5 (what each of the two would do alone)."""
    folder, half = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("half")
    for out_dir, batch in ((folder / "one", 10), (half / "half", 5)):
        one = run_script("quick_test.py", *settings(tiny_gpt2_dir, chats_jsonl, out_dir, batch))
        assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    two = accelerate_launch("ddp.yaml", 2, "quick_test.py", *settings(tiny_gpt2_dir, chats_jsonl, folder / "two", 5))
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    return folder, one, two, half / "half"


def test_two_processes_write_the_same_folder_with_the_global_batch(one_and_two_processes):
    folder, one, two, _ = one_and_two_processes
    assert sorted(p.name for p in (folder / "two").iterdir()) == sorted(p.name for p in (folder / "one").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["one", "two"]  # no staging or checkpoint folders left
    single = json.loads((folder / "one" / METADATA_FILE).read_text())
    both = json.loads((folder / "two" / METADATA_FILE).read_text())
    assert (both["environment"]["num_processes"], both["settings"]["batch_size"],
            both["results"]["effective_batch_size"]) == (2, 5, 10)
    assert (single["environment"]["num_processes"], single["results"]["effective_batch_size"]) == (1, 10)
    # Each process took half of every batch: 4 steps of 10 chats are 2 epochs of 20, as in one process.
    single, both = single["results"], both["results"]
    assert both["optimizer_steps"] == single["optimizer_steps"] == 4
    assert both["epochs_completed"] == single["epochs_completed"] == 2.0
    assert both["tokens_processed"] == single["tokens_processed"]  # counted over both processes
    assert "2 processes" in json.loads((folder / "two" / METADATA_FILE).read_text())["environment"]["device"] and "x 2 processes" in (folder / "two" / "README.md").read_text()


def test_only_the_main_process_prints(one_and_two_processes):
    _, _, two, _ = one_and_two_processes
    assert two.stdout.count("Done in") == 1 and two.stdout.count("Data: ") == 1
    assert "Training: 4 optimizer steps of 10 conversations (5 x 1 accumulated x 2 processes)" in two.stdout
    assert two.stdout.count("step     4/4") == 1
    assert "Traceback" not in two.stderr and "warning" not in two.stderr.lower()


def test_gradients_are_averaged_over_the_processes(one_and_two_processes, tiny_gpt2_dir):
    """Same chats per step, so the same weights as one process with twice the batch, up to float rounding;
    and far from a run on half the batch (what each process alone would have done)."""
    from safetensors.torch import load_file

    folder, _, _, half_dir = one_and_two_processes
    single, both = (load_file(folder / name / "model.safetensors") for name in ("one", "two"))
    half = load_file(half_dir / "model.safetensors")
    base = load_file(tiny_gpt2_dir / "model.safetensors")

    def largest_difference(a, b):
        return max((a[name] - b[name]).abs().max().item() for name in a)

    moved, apart, from_half = (largest_difference(single, base), largest_difference(single, both),
                               largest_difference(half, both))
    assert moved > 1e-3 and apart < 1e-4 and from_half > 1e-3, (moved, apart, from_half)


def test_the_two_process_folder_chats(one_and_two_processes):
    folder, _, _, _ = one_and_two_processes
    result = run_script("test_chatbot.py", "-p", "Hello", "--max-new-tokens", "4", "--model", str(folder / "two"))
    assert result.returncode == 0, result.stderr[-2000:]


def test_lora_refuses_sharding_with_a_clear_message(tiny_gpt2_dir, chats_jsonl, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_FSDP": "true", "HF_HUB_OFFLINE": "1"}  # what the FSDP config sets
    result = subprocess.run([sys.executable, str(ROOT / "quick_test.py"), "--lora",
                             *settings(tiny_gpt2_dir, chats_jsonl, tmp_path / "out", 5)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--lora under FSDP is not supported" in result.stderr, result.stderr[-2000:]
    assert "configs/ddp.yaml" in result.stderr and not (tmp_path / "out").exists()


def test_a_refused_run_under_the_launcher_says_why_above_its_childfailederror(tiny_gpt2_dir, chats_jsonl, tmp_path):
    """The launcher reports a process that stopped as ChildFailedError; the error: line above it says why."""
    args = [*settings(tiny_gpt2_dir, chats_jsonl, tmp_path / "out", 5), "--num-train-samples", "0"]
    result = accelerate_launch("ddp.yaml", 2, "quick_test.py", *args)
    assert result.returncode != 0 and "ChildFailedError" in result.stderr, result.stderr[-3000:]
    why = result.stderr.find("error: --num-train-samples must be at least 1")
    assert 0 <= why < result.stderr.index("ChildFailedError"), result.stderr[-3000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, kind", [("ddp.yaml", "MULTI_GPU"), ("fsdp.yaml", "FSDP")])
def test_accelerate_reads_each_config(name, kind):
    """FSDP needs GPUs: here only checked to be a valid accelerate config that saves whole models."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = ROOT / "configs" / name
    config = load_config_from_file(str(path))
    assert config.distributed_type == kind and config.mixed_precision == "no" and config.num_machines == 1
    raw = yaml.safe_load(path.read_text())
    if kind == "FSDP":
        assert raw["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert f"--config_file configs/{name}" in path.read_text()  # its launch command, documented in the file


def test_a_killed_two_process_run_resumes_to_where_it_would_have_ended(tiny_gpt2_dir, chats_jsonl, tmp_path):
    """The launcher and every training process killed outright (SIGKILL) after a checkpoint, as when the machine
    goes down: the same command continues, and ends with the steps, tokens and weights of one uninterrupted
    process with the same global batch."""
    import psutil
    from safetensors.torch import load_file

    def args(out_dir, batch):
        return [*settings(tiny_gpt2_dir, chats_jsonl, out_dir, batch), "--max-steps", "8", "--save-steps", "3"]

    out_dir = tmp_path / "two"
    launcher = paused_launch(*args(out_dir, 5))
    processes = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(recursive=True)]
    assert len(processes) >= 3  # the launcher and its two training processes
    for process in processes:
        process.kill()
    psutil.wait_procs(processes, timeout=30)
    launcher.communicate()
    checkpoint = tmp_path / "two-checkpoints" / "checkpoint-3"
    assert (checkpoint / "trainer_state.json").is_file() and not out_dir.exists()

    resumed = accelerate_launch("ddp.yaml", 2, "quick_test.py", *args(out_dir, 5))
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert resumed.stdout.count("Resuming from") == 1
    one = run_script("quick_test.py", *args(tmp_path / "one", 10))
    assert one.returncode == 0, one.stderr[-2000:]
    two_results, one_results = (json.loads((folder / METADATA_FILE).read_text())["results"]
                                for folder in (out_dir, tmp_path / "one"))
    assert two_results["resumed_from_step"] == 3
    for field in ("optimizer_steps", "tokens_processed", "epochs_completed"):
        assert two_results[field] == one_results[field], field
    both, single = (load_file(folder / "model.safetensors") for folder in (out_dir, tmp_path / "one"))
    assert max((both[name] - single[name]).abs().max().item() for name in both) < 1e-4
    assert not (tmp_path / "two-checkpoints").exists()


def paused_launch(*args: str) -> subprocess.Popen:
    """Two processes of quick_test.py, paused once checkpoint-3 is saved (tests/paused_run.py), to be killed."""
    for _ in range(3):
        launcher = subprocess.Popen(launch_command("ddp.yaml", 2, "quick_test.py", *args, pause="checkpoint=3"),
                                    cwd=ROOT, env=LAUNCH_ENV, text=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
        printed = []
        for line in launcher.stdout:
            printed.append(line)
            if "paused after checkpoint-3" in line:  # after a progress bar's \r, in the merged output
                return launcher
        launcher.wait(timeout=60)
        if PORT_TAKEN not in "".join(printed):
            break
    pytest.fail("the run ended before checkpoint-3: " + "".join(printed)[-3000:])
