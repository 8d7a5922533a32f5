"""Evaluate: what SFT changed in how well the model does what it is asked, against its base model.

For each model, on the same IFEval prompts (greedy, each rendered by the fine-tuned model's chat template):
  IFEval        the share of prompts (and of instructions) followed, by Google's rules (ifeval.py)
  behaviour     compare's labels on the same answers: clean stop, role leak, repetition, length
  held-out loss the mean cross-entropy per trained token over the whole held-out split: one sum over all
                its tokens divided by their number, not a mean of batch means
The base is scored twice: as it answers, and cut at the first turn it invents ("User:", "Assistant:").
Its raw score is inflated: it echoes the request, with its formatting examples, in the turns it writes.
"""

import time

from sft.data.constraints import HELD_OUT
from sft.data.masking import IGNORE_INDEX, encode_chat
from sft.eval import compare, ifeval

CPU_PROMPTS = 100  # on a CPU: 10 to 15 minutes for the offline kit's two models on 2 cores (README, measured)
MAX_NEW_TOKENS = 256
CUT_BASE = "base, cut at its first role line"


def evaluate(contenders: dict, tokenizer, items: list[dict], decoding, held_out: list | None, max_length: int) -> dict:
    """Answers, IFEval scores, behaviour and held-out loss for each model in `contenders` (name -> model)."""
    results, started, prompts = {}, time.time(), [item["prompt"] for item in items]
    for name, model in contenders.items():
        answers, speed = kept_answers(model, tokenizer, prompts, decoding, name)  # generated once per model
        results[name] = {"answers": answers, "behaviour": compare.summarize(answers, speed),
                         "ifeval": by_group(ifeval.score(items, [answer.text for answer in answers])),
                         "held_out_loss": held_out_loss(model, tokenizer, held_out, max_length) if held_out else None}
        if name == "base":
            cut = [compare.cut_at_role(answer.text) for answer in answers]
            results[CUT_BASE] = {"ifeval": by_group(ifeval.score(items, cut))}
    results["seconds"] = round(time.time() - started, 1)
    return results


def by_group(score: dict) -> dict:
    """IFEval's score with instruction-level strict added for the types the kit's form instructions teach
    (constraints.py) and for the others, left out of them on purpose."""
    groups = {"taught": [v for k, v in score["by_instruction"].items() if k not in HELD_OUT],
              "not_taught": [v for k, v in score["by_instruction"].items() if k in HELD_OUT]}
    return {**score, **{f"instruction_level_{group}": sum(v["followed"] for v in counts) / sum(v["of"] for v in counts)
                        for group, counts in groups.items() if counts}}


def kept_answers(model, tokenizer, prompts: list[str], decoding, name: str):
    """compare.generate_answers, kept in the project's cache under a key of everything the answers depend on:
    the weights, the chat template, the prompts, the decoding and the generating code. Evaluating several
    runs from one base, or a DPO model after its SFT model, then generates each model's answers once: a base's
    answers are half of each evaluation's time, an SFT model's 6 of a DPO evaluation's 13 minutes (BENCHMARKS.md)."""
    import dataclasses
    import hashlib
    import json
    import os
    from pathlib import Path

    import torch

    from sft import generation
    from sft.offline_kit import cache_dir

    digest = hashlib.sha256()
    for part in (model.config.to_json_string(), str(model.dtype), tokenizer.chat_template or "", json.dumps(prompts),
                 json.dumps(dataclasses.asdict(decoding)), Path(compare.__file__).read_text(),
                 Path(generation.__file__).read_text()):
        digest.update(part.encode() + b"\0")
    for tensor in model.state_dict().values():  # the weights themselves: another run's base is another base
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    path = cache_dir() / "answers" / f"{digest.hexdigest()[:32]}.json"
    if path.is_file():
        kept = json.loads(path.read_text(encoding="utf-8"))
        print(f"The {name} model's answers to these prompts were kept from an earlier evaluation ({path}).")
        return [compare.Answer(**answer) for answer in kept["answers"]], kept["tokens_per_second"]
    answers, speed = compare.generate_answers(model, tokenizer, prompts, decoding, name=name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        partial.write_text(json.dumps({"answers": [dataclasses.asdict(a) for a in answers],
                                       "tokens_per_second": speed}), encoding="utf-8")
        partial.replace(path)  # whole or absent
    except OSError:  # an unwritable cache costs only the keeping
        pass
    return answers, speed


def held_out_loss(model, tokenizer, chats: list, max_length: int, batch_size: int = 8) -> float | None:
    """Mean cross-entropy per trained token over all of `chats`, encoded and labelled as in training."""
    import torch

    from sft.train.label_only_loss import label_only_logits_possible, labelled_tokens_loss

    encoded = [e for e in (encode_chat(tokenizer, chat, max_length) for chat in chats) if e is not None]
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = pad([(e.input_ids, e.labels) for e in encoded[start:start + batch_size]], tokenizer.pad_token_id)
        batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
        with torch.no_grad():
            if label_only_logits_possible(model):  # only the labelled positions through the head
                loss_sum, _, _, labelled = labelled_tokens_loss(model, batch)
            else:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
                targets = batch["labels"][:, 1:]
                loss_sum = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                                             ignore_index=IGNORE_INDEX, reduction="sum")
                labelled = (targets != IGNORE_INDEX).sum()
        total, count = total + float(loss_sum), count + int(labelled)
    return total / count if count else None


def pad(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """Right-padded input_ids, attention_mask and labels (IGNORE_INDEX on padding) for one batch."""
    import torch

    longest = max(len(ids) for ids, _ in rows)
    return {"input_ids": torch.tensor([ids + [pad_id] * (longest - len(ids)) for ids, _ in rows]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids, _ in rows]),
            "labels": torch.tensor([labels + [IGNORE_INDEX] * (longest - len(labels)) for _, labels in rows])}


def sft_run(metadata: dict) -> dict | None:
    """The metadata of the SFT run behind a model: its own, or for DPO and GRPO (learnt from pairs or prompts)
    that of the SFT model they continued from; None if that folder is gone."""
    from sft.train.metadata import read_metadata

    while metadata is not None and metadata.get("stage") in ("dpo", "grpo"):
        metadata = read_metadata(metadata["base_model_path"])
    return metadata


def held_out_chats(metadata: dict) -> list | None:
    """The run's held-out chats, drawn again from its SFT run's settings (the split is seeded); None if the data
    is gone. A DPO or GRPO run's are those of the SFT model it continued from."""
    from sft.data.load import read_chats
    from sft.errors import UserError
    from sft.models import hub_available

    metadata = sft_run(metadata)
    if metadata is None:
        return None
    s = metadata["settings"]
    try:
        chats = read_chats(s["dataset_name"], s["dataset_split"], s["num_train_samples"], s["eval_fraction"], s["seed"],
                           s["offline"] or metadata["data"]["source"] == "offline-kit", hub_available)
    except UserError:
        return None
    return chats.eval or None


def table(results: dict) -> list[str]:
    """The comparison as markdown rows: IFEval at both levels, behaviour, held-out loss."""
    rows = ["| model | IFEval prompt-level strict (loose) | instruction-level strict (loose) | clean stop | role leak "
            "| repetition | mean tokens | held-out loss |", "|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        if not isinstance(result, dict):
            continue
        score, behaviour, loss = result["ifeval"], result.get("behaviour"), result.get("held_out_loss")
        row = (f"| {name} | {score['prompt_level_strict']:.1%} ({score['prompt_level_loose']:.1%}) | "
               f"{score['instruction_level_strict']:.1%} ({score['instruction_level_loose']:.1%}) | ")
        row += (f"{behaviour['clean_stop_rate']:.0%} | {behaviour['role_leak_rate']:.0%} | "
                f"{behaviour['repetition_rate']:.0%} | {behaviour['mean_answer_tokens']:.0f} | " if behaviour
                else "– | – | – | – | ")
        rows.append(row + (f"{loss:.3f} |" if loss is not None else "– |"))
    return rows


def taught_table(results: dict) -> list[str]:
    """Instruction-level strict for the IFEval types the kit's form instructions teach, and for the others."""
    rows = ["| model | types taught, instruction-level strict | types not taught |", "|---|---|---|"]
    for name, result in results.items():
        if isinstance(result, dict):
            cells = [result["ifeval"].get(f"instruction_level_{group}") for group in ("taught", "not_taught")]
            rows.append(f"| {name} | " + " | ".join("–" if c is None else f"{c:.1%}" for c in cells) + " |")
    return rows
