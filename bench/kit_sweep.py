"""Choose the offline kit's training settings by measurement: train with each, score each on held-out requests.

    python bench/kit_sweep.py --script quick_test.py --runs "forms=0 multi=0 long=0" "forms=0.3" "lr=5e-5"
    python bench/kit_sweep.py --script quick_test.py --runs "lr=2e-4 lora"
    python bench/kit_sweep.py --script train_dpo.py --runs "quick lr=5e-6" "quick lr=2e-5"

Each run is the script itself (offline, on the kit) with the run's flags. Then the fine-tuned model alone
answers --limit requests of the kit's test split (never trained on), each given a form instruction by
sft/data/constraints.py (seeded, so the same for every run), greedy, up to 256 new tokens, and the
instruction's own checker scores the answer. IFEval's prompts are never used here: they judge the chosen
settings once, at the end (test_chatbot.py --mode eval), and are not tuned on. Prints one table row per
run: the machine, the training time, the held-out loss, the share of instructions followed, compare's
behaviour labels on the same answers, and for train_dpo.py the held-out pairs' preference accuracy and
reward margin (the held-out loss is then on its SFT model's held-out chats). BENCHMARKS.md keeps the results.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sft.eval.instructions import MAX_NEW_TOKENS  # noqa: E402

FLAGS = {"lr": "--learning-rate", "epochs": "--num-epochs", "steps": "--max-steps", "len": "--max-length",
         "n": "--num-train-samples", "batch": "--batch-size", "accum": "--gradient-accumulation-steps",
         "beta": "--beta", "pairs": "--num-pairs", "forms": "--constraint-share", "multi": "--multi-turn-share",
         "long": "--long-answer-share"}


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
    from sft.data.constraints import held_out_requests
    from sft.devices import pick_device
    from sft.eval import evaluate, instructions
    from sft.generation import load_for_generation

    model, tokenizer = load_for_generation(models.finetuned_source(str(folder)))
    scored = instructions.score(model, tokenizer, held_out_requests(limit)).as_dict()
    metadata = json.loads((folder / "training_metadata.json").read_text())
    held_out = evaluate.held_out_chats(metadata)
    max_length = evaluate.sft_run(metadata)["settings"]["max_length"] if held_out else None
    loss = evaluate.held_out_loss(model, tokenizer, held_out, max_length) if held_out else None
    return {**scored, "held_out": loss, "device": pick_device().name}


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
    parser.add_argument("--limit", type=int, default=64, help="held-out kit requests, each with a form instruction")
    parser.add_argument("--folder", default="/tmp/kit-sweep")
    args = parser.parse_args()
    print("| run | train time | held-out loss | form instructions followed | clean stop | repetition | mean tokens "
          "| DPO: held-out preference accuracy, margin |\n|---|---|---|---|---|---|---|---|", flush=True)
    for run in args.runs:
        folder = Path(args.folder) / run.replace(" ", "_").replace("=", "")
        seconds = train(args.script, run, folder)
        s = score(folder, args.limit)
        print(f"| {args.script} {run} | {seconds / 60:.1f} min | {s['held_out']:.3f} | {s['followed']:.1%} | "
              f"{s['clean_stop_rate']:.0%} | {s['repetition_rate']:.0%} | {s['mean_answer_tokens']:.0f} | "
              f"{preference(folder)} |", flush=True)
        (folder / "sweep.json").write_text(json.dumps({"run": run, "train_seconds": seconds, **s}, indent=1))
    print(f"\nMachine: {s['device']}; {s['requests']} held-out kit requests with a form instruction, greedy, "
          f"{MAX_NEW_TOKENS} new tokens at most.")


if __name__ == "__main__":
    main()
