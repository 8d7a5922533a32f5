"""The report card: report.md, report.json and report.png in the model folder, from evaluate.py's results.

What was trained, the loss curve, the held-out loss before and after, IFEval and the behaviour labels
for the base and the fine-tuned model, per instruction type, a chart, and example answers. Each file is
written aside and renamed into place, so a report is whole or absent.
"""

import dataclasses
import json
import os
from pathlib import Path

from sft.data.constraints import HELD_OUT, TRAINED
from sft.eval.evaluate import CUT_BASE, table, taught_table

REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "report.png"
EXAMPLES = 3
CHART = [("IFEval:\nprompts followed", "ifeval", "prompt_level_strict"),
         ("IFEval:\ninstructions followed", "ifeval", "instruction_level_strict"),
         ("clean stop", "behaviour", "clean_stop_rate"), ("role leak", "behaviour", "role_leak_rate"),
         ("repetition", "behaviour", "repetition_rate")]


def write(folder: Path, metadata: dict | None, items: list[dict], results: dict, about: dict) -> None:
    """report.json, report.png and report.md into `folder`, each written whole or not at all."""
    models = {name: result for name, result in results.items() if isinstance(result, dict)}
    record = {**about, "trained": summary_of_training(metadata), "models": {
        name: {**{k: v for k, v in result.items() if k != "answers"},
               "answers": [{**dataclasses.asdict(a), "ifeval_followed": ok}
                           for a, ok in zip(result.get("answers", []), result["ifeval"]["followed_strict"])]}
        for name, result in models.items()}}
    write_atomically(folder / REPORT_JSON, lambda path: path.write_text(json.dumps(record, indent=2) + "\n"))
    write_atomically(folder / REPORT_PNG, lambda path: chart(models, path))
    write_atomically(folder / REPORT_MD, lambda path: path.write_text(markdown(metadata, items, results, about)))


def write_atomically(target: Path, write_to) -> None:
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        write_to(partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def summary_of_training(metadata: dict | None) -> dict | None:
    if metadata is None:
        return None
    keys = ("base_model", "dataset", "num_samples", "num_epochs", "learning_rate", "model_parameters", "stage")
    return {**{key: metadata.get(key) for key in keys}, "lora": metadata.get("lora") is not None,
            "optimizer_steps": metadata["results"]["optimizer_steps"],
            "eval_loss_before": metadata["results"]["eval_loss_before"], "eval_loss": metadata["results"]["eval_loss"]}


def chart(models: dict, path: Path) -> None:
    """The rates side by side, one bar per model (higher is better for the first three, lower for the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [name for name, result in models.items() if "behaviour" in result]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(shown), 1)
    for i, name in enumerate(shown):
        values = [models[name][part][key] for _, part, key in CHART]
        bars = ax.bar([x + i * width for x in range(len(CHART))], values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize=8)
    ax.set_xticks([x + width * (len(shown) - 1) / 2 for x in range(len(CHART))], [label for label, _, _ in CHART],
                  fontsize=9)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of the IFEval answers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def markdown(metadata: dict | None, items: list[dict], results: dict, about: dict) -> str:
    trained = summary_of_training(metadata)
    lines = ["# Report card", ""]
    if trained:
        how, what = {"dpo": ("Preference-tuned (DPO)", "pairs"), "grpo": ("Trained with GRPO", "prompts")}.get(
            trained["stage"], ("Fine-tuned", "chats"))
        lines += [f"{how} from `{trained['base_model']}` on {trained['num_samples']:,} {what} of "
                  f"`{trained['dataset']}`: {trained['optimizer_steps']} optimizer steps at learning rate "
                  f"{trained['learning_rate']:g}{' with LoRA' if trained['lora'] else ''} "
                  "(`training_metadata.json` has everything).", "", "![loss curve](loss_curve.png)", ""]
    lines += [f"Evaluated on {about['prompts']} of IFEval's {about['of']} prompts ({about['subset']}), "
              f"{about['decoding']}, up to {about['max_new_tokens']} new tokens, each prompt rendered by the "
              f"fine-tuned model's chat template; scored by Google's rules (lm-eval's copy), sentences counted with "
              f"{about['sentence_splitter']}. {about['machine']}, {about['precision']}, batches of "
              f"{about['batch_size']}, {about['seconds']:.0f} s.", "",
              *table(results), "", "![the rates side by side](report.png)", ""]
    lines += ["- **IFEval**: prompts whose every instruction was followed (prompt level), and instructions followed "
              "(instruction level); strict as answered, loose also without the first or last line or asterisks.",
              f"- **{CUT_BASE}**: the base model's answers up to the first turn it invents; its raw score counts "
              "instructions it only echoes in those turns.",
              "- **held-out loss**: mean cross-entropy per trained token over the whole held-out split "
              "(the training log's is a mean of batch means).", ""]
    lines += per_instruction(results) + examples(items, results)
    return "\n".join(lines) + "\n"


def per_instruction(results: dict) -> list[str]:
    names = [name for name, result in results.items() if isinstance(result, dict)]
    kinds = sorted({kind for name in names for kind in results[name]["ifeval"]["by_instruction"]})
    lines = ["## Taught and not taught", "",
             f"The kit's form instructions (`sft/data/constraints.py`) teach {len(TRAINED)} of IFEval's instruction "
             f"types; the other {len(HELD_OUT)} are left out on purpose, so their score shows what transferred.", "",
             *taught_table(results), "",
             "## Per instruction type (strict)", "", "| instruction | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for kind in kinds:
        cells = [results[name]["ifeval"]["by_instruction"].get(kind, {"followed": 0, "of": 0}) for name in names]
        taught = "" if kind in HELD_OUT else " (taught)"
        lines.append(f"| `{kind}`{taught} | " + " | ".join(f"{c['followed']}/{c['of']}" for c in cells) + " |")
    return lines + [""]


def examples(items: list[dict], results: dict) -> list[str]:
    lines = ["## Example answers", ""]
    models = [name for name, result in results.items() if isinstance(result, dict) and "answers" in result]
    for i, item in enumerate(items[:EXAMPLES]):
        lines += [f"### {item['prompt']}", "", f"Instructions: {', '.join(item['instruction_id_list'])}", ""]
        for name in models:
            answer, ok = results[name]["answers"][i], results[name]["ifeval"]["followed_strict"][i]
            lines += [f"**{name}** ({answer.new_tokens} tokens; {'followed' if ok else 'not followed'})", "", "```",
                      answer.text or "(empty)", "```", ""]
    return lines
