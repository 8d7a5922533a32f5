"""What a run will take, worked out before it starts: its steps, its time on a CPU, its memory, its disk.

The time and the memory come from one real forward and backward pass on the training set's longest
batch (measure_one_batch), so they hold for this model, this data and this machine.
"""

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30


def planned_steps(settings, train_chats: int, processes: int) -> tuple[int, int]:
    """(optimizer steps of the whole run, steps per pass over the data), as the Trainer will count them."""
    batches = math.ceil(train_chats / (settings.batch_size * processes))  # each process takes every n-th batch
    per_epoch = math.ceil(batches / settings.gradient_accumulation_steps)
    total = settings.max_steps if settings.max_steps > 0 else math.ceil(per_epoch * settings.num_epochs)
    return total, per_epoch


@dataclass
class Measurement:
    seconds: float  # one forward and backward pass
    tokens: int  # in that batch
    peak_bytes: int  # the process's peak memory (CUDA: allocated on the GPU) during the pass
    optimizer_bytes: int  # AdamW's two fp32 moments per trainable parameter, allocated at the first step


def measure_one_batch(trainer) -> Measurement:
    """Time and memory of one forward and backward pass on the `batch_size` longest training chats (or pairs)."""
    import torch

    dataset, model = trainer.train_dataset, trainer.model
    lengths = example_lengths(dataset)
    longest = sorted(range(len(lengths)), key=lengths.__getitem__)[-trainer.args.per_device_train_batch_size:]
    batch = trainer.data_collator([dataset[i] for i in longest])
    batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
    cuda = model.device.type == "cuda"
    torch.cuda.reset_peak_memory_stats() if cuda else reset_peak_rss()
    logged = copy.deepcopy(trainer._metrics), trainer._total_train_tokens  # compute_loss logs what it sees
    seconds = []
    for _ in range(2 if cuda else 1):  # a GPU's first pass pays one-off start-up costs; a CPU's hardly does
        started = time.time()
        with trainer.accelerator.autocast():  # bf16/fp16 on a GPU, as in training
            loss = trainer.compute_loss(model, dict(batch))  # the loss training uses (the label-only head)
        loss.backward()
        seconds.append(time.time() - started)
    peak = peak_memory(model.device.type)
    model.zero_grad(set_to_none=True)
    trainer._metrics, trainer._total_train_tokens = logged
    torch.manual_seed(trainer.args.seed)  # training starts from the same random state as without the pass
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Measurement(seconds[-1], int(batch["attention_mask"].sum()), peak, 8 * trainable)


def example_lengths(dataset) -> list[int]:
    """Tokens of each training example: a chat's, or a DPO pair's prompt with its longer answer."""
    if "input_ids" in dataset.column_names:
        return [len(ids) for ids in dataset["input_ids"]]
    return [len(p) + max(len(c), len(r)) for p, c, r in
            zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]


def cpu_training_time(measurement: Measurement, tokens_per_epoch: int, steps: tuple[int, int], processes: int) -> str:
    """The whole run's training time, scaled from the measured batch (the processes share the work)."""
    total, per_epoch = steps
    tokens_per_second = measurement.tokens / measurement.seconds * processes
    minutes = tokens_per_epoch * total / per_epoch / tokens_per_second / 60
    return (f"about {minutes:,.0f} min of training ({tokens_per_second:,.0f} tokens/s measured on the longest "
            "batch)" if minutes >= 1 else f"under a minute of training ({tokens_per_second:,.0f} tokens/s)")


def available_memory(device_kind: str) -> int:
    """Bytes this process could still grow to: what it holds now and what the machine (or GPU) has free."""
    if device_kind == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free + torch.cuda.memory_allocated()
    import psutil

    return psutil.virtual_memory().available + psutil.Process().memory_info().rss


def disk_needs(trainer, tokenizer) -> tuple[int, int]:
    """(bytes of the saved model folder, bytes of one checkpoint). The folder holds the fp32 weights (with
    LoRA merged in, and the adapter alone besides); a checkpoint holds the trained weights (all of them, or
    the adapter's) and AdamW's two fp32 moments for each trained one."""
    from sft.train.lora import base_parameters

    parameters = base_parameters(trainer.model)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    adapter = trainable if hasattr(trainer.model, "peft_config") else 0
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tokenizer_bytes = len(backend.to_str()) if backend is not None else 0
    checkpoint = 12 * adapter if adapter else 4 * parameters + 8 * trainable  # frozen weights are saved too
    return 4 * (parameters + adapter) + tokenizer_bytes + 2**20, checkpoint + 2**20


def peak_memory(device_kind: str) -> int:
    """The peak since the last reset: on CUDA, allocated on the GPU; elsewhere, the process's resident memory."""
    if device_kind == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    return peak_rss()


def reset_peak_rss() -> None:
    """Linux lets a process reset its peak resident memory (VmHWM), so the pass's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss() -> int:
    """The process's peak resident memory, in bytes (since the last reset on Linux; since its start elsewhere)."""
    try:
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        import resource
        import sys

        scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
