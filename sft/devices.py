"""The device a run trains or chats on, and its precision: CUDA, Apple MPS, or the CPU."""

from dataclasses import dataclass

from sft import distributed


@dataclass
class Device:
    kind: str  # "cuda", "mps" or "cpu"
    name: str  # for the log and the metadata, e.g. "cuda (NVIDIA H100)" or "cpu (2 threads)"
    precision: str  # "bf16", "fp16" or "fp32": what the matrix multiplies compute in

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


def pick_device() -> Device:
    """CUDA with bf16 where the card has it (else fp16), Apple MPS, or the CPU with all its cores, in fp32."""
    import torch

    kind, processes = best_device(), distributed.num_processes()
    if kind == "cuda":
        on_processes = f", {processes} processes" if processes > 1 else ""
        return Device(kind, f"cuda ({torch.cuda.get_device_name(0)}{on_processes})",
                      "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if kind == "mps":
        return Device(kind, "mps", "fp32")  # autocast on MPS is not reliable for training yet
    threads = torch.get_num_threads()
    on_processes = f"{processes} processes x " if processes > 1 else ""
    return Device(kind, f"cpu ({on_processes}{threads} thread{'s' if threads > 1 else ''})", "fp32")
