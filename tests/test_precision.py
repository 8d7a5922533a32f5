"""bf16 where the CPU has it natively, fp32 where it does not: the choice, its banner, and that bf16 trains
like fp32. The CPU's own answer is simulated both ways, so the test means the same on any machine."""

import contextlib
import io
import json

import pytest
from conftest import quick_args

from sft import devices
from sft.train.metadata import METADATA_FILE


def test_auto_takes_bf16_only_where_the_cpu_has_it_natively(monkeypatch):
    monkeypatch.setattr(devices, "best_device", lambda: "cpu")
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert devices.pick_device().precision == "bf16" and "natively" in devices.pick_device().why
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    chosen = devices.pick_device()
    assert chosen.precision == "fp32" and "has no native bf16" in chosen.why
    assert devices.pick_device("bf16").precision == "bf16" and devices.pick_device("bf16").why == "--precision bf16"


@pytest.mark.parametrize("machine, flags, native", [
    ("x86_64", "fpu avx2 avx512f avx512bw avx512_vnni", False),  # AVX-512 alone: oneDNN emulates bf16
    ("x86_64", "fpu avx2 avx512f avx512bw avx512_bf16", True),  # AMD Zen 4, Intel Cooper Lake
    ("x86_64", "fpu avx2 avx512f amx_tile amx_bf16", True),  # Intel Sapphire Rapids
    ("aarch64", "fp asimd", True),  # Arm: oneDNN's own check decides
])
def test_bf16_is_native_only_where_the_cpu_has_bf16_instructions(monkeypatch, tmp_path, machine, flags, native):
    import platform

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(devices, "onednn_bf16", lambda: True)  # what torch's oneDNN says on any AVX-512 CPU
    assert devices.cpu_has_bf16(str(cpuinfo)) is native
    assert devices.cpu_has_bf16(str(tmp_path / "none")) is True  # no /proc/cpuinfo: oneDNN's answer
    monkeypatch.setattr(devices, "onednn_bf16", lambda: False)
    assert devices.cpu_has_bf16(str(cpuinfo)) is False


@pytest.fixture(scope="module")
def both_runs(tiny_gpt2_dir, chats_jsonl, tmp_path_factory):
    """quick_test.py's main() in this process (6 steps on the tiny model), on a CPU without bf16 and on one
    with it: has_bf16 -> (metadata, what it printed, the folder)."""
    import train_chatbot

    runs, monkeypatch = {}, pytest.MonkeyPatch()
    monkeypatch.setattr(devices, "best_device", lambda: "cpu")
    try:
        for has_bf16 in (False, True):
            monkeypatch.setattr(devices, "cpu_has_bf16", lambda value=has_bf16: value)
            out_dir, printed = tmp_path_factory.mktemp("precision") / "chatbot", io.StringIO()
            with contextlib.redirect_stdout(printed):
                train_chatbot.main(quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--num-train-samples", "40",
                                              "--max-steps", "6", "--logging-steps", "1", "--learning-rate", "1e-3"))
            runs[has_bf16] = json.loads((out_dir / METADATA_FILE).read_text()), printed.getvalue(), out_dir
    finally:
        monkeypatch.undo()
    return runs


def test_without_native_bf16_the_run_says_so_and_trains_in_fp32(both_runs):
    metadata, printed, _ = both_runs[False]
    assert "fp32: this CPU" in printed and "has no native bf16, which would be emulated and slow." in printed
    assert metadata["environment"]["precision"] == "fp32" and metadata["settings"]["precision"] == "auto"


def test_with_native_bf16_the_run_trains_in_bf16_mixed_precision_as_fp32_does(both_runs):
    import torch
    from safetensors.torch import load_file

    bf16, printed, out_dir = both_runs[True]
    fp32 = both_runs[False][0]
    assert "bf16: this CPU multiplies in bf16 natively" in printed and bf16["environment"]["precision"] == "bf16"
    assert load_file(out_dir / "model.safetensors")["transformer.h.0.mlp.c_fc.weight"].dtype == torch.float32
    for key in ("eval_loss_before", "eval_loss", "final_train_loss"):  # the same run, computed in bf16
        assert bf16["results"][key] == pytest.approx(fp32["results"][key], rel=0.02), key
    assert bf16["results"]["eval_loss"] < bf16["results"]["eval_loss_before"] - 0.1  # and it learned
    assert bf16["results"]["final_train_loss"] != fp32["results"]["final_train_loss"]  # bf16 really computed it
