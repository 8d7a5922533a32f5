"""Choose the offline kit's training settings by measurement: train with each, score each on IFEval.

    python bench/kit_sweep.py --script quick_test.py --runs "lr=2e-5" "lr=1e-4" "lr=3e-4" --limit 50
    python bench/kit_sweep.py --script quick_test.py --runs "lr=2e-4 lora" --limit 50
    python bench/kit_sweep.py --script train_dpo.py --runs "quick lr=5e-6" "quick lr=2e-5" --limit 30

Each run is the script itself (offline, on the kit) with the run's flags; then the fine-tuned model alone
answers the first --limit prompts of the evaluation's fixed subset and the default compare prompts, greedy, as
`test_chatbot.py --mode eval` does (the base model's scores are in the README: it does not change). Prints one
table row per run, with the machine, the training time and the held-out loss (for train_dpo.py: also the held-out pairs' preference
accuracy and reward margin; the held-out loss is then on its SFT model's held-out chats). BENCHMARKS.md keeps the
results.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sft.eval.evaluate import MAX_NEW_TOKENS  # noqa: E402

FLAGS = {"lr": "--learning-rate", "epochs": "--num-epochs", "steps": "--max-steps", "len": "--max-length",
         "n": "--num-train-samples", "batch": "--batch-size", "accum": "--gradient-accumulation-steps",
         "beta": "--beta", "pairs": "--num-pairs"}


def flags(run: str) -> list[str]:
    """'lr=1e-4 epochs=2 lora' -> ['--learning-rate', '1e-4', '--num-epochs', '2', '--lora']."""
    out = []
    for part in run.split():
        name, _, value = part.partition("=")
        out += [FLAGS[name], value] if value else ["--" + name]
    return out


def train(script: str, run: str, folder: Path) -> float:
    """The script's wall time in seconds; a folder this sweep already trained is kept (its own total time)."""
    if (folder / "training_metadata.json").exists():
        return json.loads((folder / "training_metadata.json").read_text())["results"]["total_seconds"]
    started = time.time()
    command = [sys.executable, script, "--offline", "--overwrite", "--output-dir", str(folder), *flags(run)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{run}: training failed\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.time() - started


def score(folder: Path, limit: int) -> dict:
    from sft import models
    from sft.devices import pick_device
    from sft.eval import compare, evaluate, ifeval
    from sft.generation import Decoding, load_for_generation

    model, tokenizer = load_for_generation(models.finetuned_source(str(folder)))
    items = ifeval.prompts(evaluate.CPU_PROMPTS)[:limit]
    decoding = Decoding(max_new_tokens=MAX_NEW_TOKENS, batch_size=8)
    metadata = json.loads((folder / "training_metadata.json").read_text())
    held_out = evaluate.held_out_chats(metadata)
    result = evaluate.evaluate({"fine-tuned": model}, tokenizer, items, decoding, held_out,
                               metadata["settings"]["max_length"])["fine-tuned"]
    defaults, _ = compare.generate_answers(model, tokenizer, compare.DEFAULT_PROMPTS, decoding, name="fine-tuned")
    return {"ifeval": result["ifeval"], "behaviour": result["behaviour"], "held_out": result["held_out_loss"],
            "defaults": [a.text for a in defaults], "device": pick_device().name}


def preference(folder: Path) -> str:
    """A DPO run's held-out preference accuracy and reward margin, from its metadata ('-' for SFT)."""
    results = json.loads((folder / "training_metadata.json").read_text())["results"]
    if results.get("eval_preference_accuracy") is None:
        return "–"
    return f"{results['eval_preference_accuracy']:.0%}, {results['eval_reward_margin']:+.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", default="quick_test.py")
    parser.add_argument("--runs", nargs="+", required=True, help="each: space-separated name=value (see FLAGS)")
    parser.add_argument("--limit", type=int, default=50, help="IFEval prompts (the first of the CPU subset)")
    parser.add_argument("--folder", default="/tmp/kit-sweep")
    args = parser.parse_args()
    print("| run | train time | held-out loss | IFEval prompt (instr.) strict | clean stop | rep. | empty answers "
          "to default prompts | mean tokens | DPO: held-out preference accuracy, margin |\n"
          "|---|---|---|---|---|---|---|---|---|", flush=True)
    for run in args.runs:
        folder = Path(args.folder) / run.replace(" ", "_").replace("=", "")
        seconds = train(args.script, run, folder)
        s = score(folder, args.limit)
        f, b = s["ifeval"], s["behaviour"]
        empty = sum(not text.strip() for text in s["defaults"])
        print(f"| {args.script} {run} | {seconds / 60:.1f} min | {s['held_out']:.3f} | "
              f"{f['prompt_level_strict']:.1%} ({f['instruction_level_strict']:.1%}) | {b['clean_stop_rate']:.0%} | "
              f"{b['repetition_rate']:.0%} | {empty}/{len(s['defaults'])} | {b['mean_answer_tokens']:.0f} | "
              f"{preference(folder)} |", flush=True)
        (folder / "sweep.json").write_text(json.dumps({"run": run, "train_seconds": seconds, **s}, indent=1))
    print(f"\nMachine: {s['device']}; {args.limit} IFEval prompts, greedy, {MAX_NEW_TOKENS} new tokens at most.")


if __name__ == "__main__":
    main()
