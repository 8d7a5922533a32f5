"""The device a run trains or chats on, and its precision: CUDA, Apple MPS, or the CPU.

Precision "auto" takes bf16 wherever the hardware multiplies in it natively: NVIDIA GPUs from Ampere
on, and CPUs whose oneDNN reports bf16 (AMD Zen 4 and later, Intel Sapphire Rapids and later, recent
Arm). Training then runs under bf16 autocast with fp32 master weights (the Trainer's own bf16), and
generation loads the weights in bf16. Elsewhere bf16 is emulated: on a CPU without it a bf16 matrix
multiply measured 0.2 GFLOP/s against 58 in fp32 (BENCHMARKS.md), so "auto" keeps fp32 there; oneDNN
reports bf16 on any AVX-512 CPU, emulating it, so on x86 the CPU's own bf16 instructions are checked too.
"""

from dataclasses import dataclass

from sft import distributed

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class Device:
    kind: str  # "cuda", "mps" or "cpu"
    name: str  # for the log and the metadata, e.g. "cuda (NVIDIA H100)" or "cpu (2 threads)"
    precision: str  # "bf16", "fp16" or "fp32": what the matrix multiplies compute in
    why: str = ""  # how the precision was chosen, for the start banner

    @property
    def compute_dtype(self):
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]


def best_device() -> str:
    """"cuda", "mps" or "cpu": the fastest device this machine has."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


X86_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # the x86 instructions that multiply in bf16 (Linux's names)


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies in bf16 natively: oneDNN's bf16 check and, on x86 Linux, one of the CPU's
    bf16 instructions. oneDNN alone says yes on any AVX-512 CPU, where it emulates bf16: on an Intel Xeon with
    AVX-512 but neither, a bf16 matrix multiply ran at 46 GFLOP/s against 218 in fp32 (BENCHMARKS.md)."""
    import platform

    if not onednn_bf16():
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True  # Arm: oneDNN's check is the instruction set's own
    try:
        flags = next(line for line in open(cpuinfo) if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return True  # no /proc/cpuinfo (macOS, Windows): oneDNN's answer
    return bool(X86_BF16_FLAGS & set(flags))


def onednn_bf16() -> bool:
    """oneDNN's bf16 check, as torch reports it."""
    import torch

    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def auto_precision(kind: str) -> tuple[str, str]:
    """(precision, why) for "auto" on this kind of device."""
    import torch

    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU computes in bf16"
        return "fp16", "this GPU has no bf16"
    if kind == "mps":
        return "fp32", "autocast on Apple MPS is not reliable for training yet"
    if cpu_has_bf16():
        return "bf16", "this CPU multiplies in bf16 natively (oneDNN); --precision fp32 turns it off"
    capability = torch.backends.cpu.get_cpu_capability()
    return "fp32", f"this CPU ({capability}) has no native bf16, which would be emulated and slow"


def pick_device(precision: str = "auto") -> Device:
    """The fastest device, all its cores, and the precision asked for ("auto": the best it has natively)."""
    import torch

    kind, processes = best_device(), distributed.num_processes()
    chosen, why = auto_precision(kind) if precision == "auto" else (precision, f"--precision {precision}")
    if kind == "cuda":
        on_processes = f", {processes} processes" if processes > 1 else ""
        return Device(kind, f"cuda ({torch.cuda.get_device_name(0)}{on_processes})", chosen, why)
    if kind == "mps":
        return Device(kind, "mps", chosen, why)
    threads = torch.get_num_threads()
    on_processes = f"{processes} processes x " if processes > 1 else ""
    return Device(kind, f"cpu ({on_processes}{threads} thread{'s' if threads > 1 else ''})", chosen, why)
