"""Compare: run the base and the fine-tuned model on the same prompts and measure how they behave.
(For a DPO folder: the SFT model it started from, and the DPO model.)

Both models get the same prompt, rendered by the fine-tuned model's chat template
("User: ...\\nAssistant:"), and the same decoding. Four numbers per model say what SFT changed:

    clean stop    the answer ended with end-of-text before the token limit
    role leak     the model wrote a new "User:" or a further "Assistant:" turn itself
    repetition    a line of words repeated, or a phrase looping (the same 4 words 3 times or more)
    length        mean answer length in tokens; plus generation speed in tokens/s
"""

import dataclasses
import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from sft.data.chat_format import ROLE_LABELS
from sft.errors import UserError
from sft.generation import Decoding, as_chat, generate_batch

# The tutorial's four prompts, then a few other kinds of request.
DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Can you explain what machine learning is?",
    "Write a Python function to calculate fibonacci numbers.",
    "What are some tips for staying healthy?",
    "How many legs does a spider have?",
    "List three primary colours.",
    "Translate 'good morning' into Spanish, then use it in a sentence.",
]

REPORT_JSON = "compare_report.json"
REPORT_MD = "compare_report.md"
WIDTH = 80

_ROLE_LINE = re.compile(r"^\s*(" + "|".join(re.escape(label) for label in ROLE_LABELS) + r")", re.MULTILINE)


def contender_names(metadata: dict | None) -> tuple[str, str]:
    """The names of the two models compared: the one a folder was trained from, and the folder's own."""
    if metadata and metadata.get("stage") in ("dpo", "grpo"):  # continued from a model folder: SFT (or DPO)
        before, after = (metadata.get("sft_model", {}).get("stage") or "sft").upper(), metadata["stage"].upper()
        return before, after if after != before else f"{after}, second pass"  # DPO on a DPO model
    return "base", "fine-tuned"


# ----------------------------------------------------------------------------- behaviour metrics


def is_clean_stop(new_token_ids: list[int], eos_token_id: int, max_new_tokens: int) -> bool:
    """Ended with end-of-text before reaching the token limit."""
    return eos_token_id in new_token_ids[:max_new_tokens]


def has_role_leak(answer: str) -> bool:
    """Wrote a line that starts a new turn ("User:" or "Assistant:") instead of stopping."""
    return bool(_ROLE_LINE.search(answer))


_STUTTER = re.compile(r"(\S.{3,}?)\1{2,}", re.DOTALL)  # a 4+ character piece three times in a row


def has_repetition(answer: str, ngram: int = 4, loops: int = 3) -> bool:
    """A line of words said twice, a stutter ("WorkWorkWork"), or the same `ngram` words `loops` times.
    Lines without a letter or digit (a `***` between paragraphs, a code fence, a `}`) are markup, not a loop:
    counted, they flagged 61 of the kit's 1,219 answers, and any answer of 3 paragraphs split by IFEval's `***`."""
    lines = [_ROLE_LINE.sub("", line).strip().lower() for line in answer.splitlines()]
    lines = [line for line in lines if re.search(r"\w", line)]
    if len(lines) != len(set(lines)) or _STUTTER.search(answer):
        return True
    words = re.findall(r"\w+", answer.lower())
    counts = {}
    for i in range(len(words) - ngram + 1):
        key = tuple(words[i:i + ngram])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= loops:
            return True
    return False


def cut_at_role(answer: str) -> str:
    """The answer up to the first line where the model starts a new turn."""
    match = _ROLE_LINE.search(answer)
    return answer[:match.start()].rstrip() if match else answer


# ----------------------------------------------------------------------------- answers


@dataclass
class Answer:
    prompt: str  # the message answered
    text: str
    new_tokens: int
    clean_stop: bool
    role_leak: bool
    repetition: bool
    earlier: list = field(default_factory=list)  # the conversation before it, for a second turn


def generate_answers(model, tokenizer, prompts: list, decoding: Decoding, cut_roles: bool = False,
                     name: str = "model"):
    """Answers to `prompts` (in their order) with their behaviour measured, with a progress bar and its ETA.
    A prompt is a message, or a chat's messages up to the answer. Prompts of similar length are generated
    together, so that a batch pads little. Returns (answers, generated tokens per second)."""
    from tqdm.auto import tqdm

    chats = [as_chat(prompt) for prompt in prompts]
    answers, generated, seconds = {}, 0, 0.0
    by_length = sorted(range(len(chats)), key=lambda i: sum(len(m["content"]) for m in chats[i]))
    progress = tqdm(total=len(prompts), desc=f"Generating with the {name} model", unit="prompt", leave=False)
    for start in range(0, len(prompts), decoding.batch_size):
        batch = by_length[start:start + decoding.batch_size]
        rows, took = generate_batch(model, tokenizer, [chats[i] for i in batch], decoding, seed=decoding.seed + start)
        seconds += took
        progress.update(len(batch))
        for i, row in zip(batch, rows):
            generated += len(row)
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            answers[i] = Answer(chats[i][-1]["content"], cut_at_role(text) if cut_roles else text, len(row),
                                is_clean_stop(row, tokenizer.eos_token_id, decoding.max_new_tokens),
                                has_role_leak(text), has_repetition(text), chats[i][:-1])
    progress.close()
    return [answers[i] for i in range(len(prompts))], generated / seconds if seconds else 0.0


def summarize(answers: list[Answer], tokens_per_second: float) -> dict:
    n = len(answers)
    return {"clean_stop_rate": sum(a.clean_stop for a in answers) / n,
            "role_leak_rate": sum(a.role_leak for a in answers) / n,
            "repetition_rate": sum(a.repetition for a in answers) / n,
            "mean_answer_tokens": sum(a.new_tokens for a in answers) / n,
            "tokens_per_second": tokens_per_second}


# ----------------------------------------------------------------------------- prompts file


def read_prompts(path: str) -> list[str | list[dict]]:
    """One prompt per line, or jsonl with a "prompt" field, or with "messages": a conversation that ends with
    the user's turn, so that the answer compared is a second (or later) one."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"prompts file {path} does not exist")
    prompts = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            prompts.append(prompt_from_json(line, f"{path}, line {number}"))
        else:
            prompts.append(line.strip())
    if not prompts:
        raise UserError(f"prompts file {path} has no prompts")
    return prompts


def prompt_from_json(line: str, where: str) -> str | list[dict]:
    """A jsonl line: its "prompt", or its "messages" checked."""
    expected = (f"{where}: expected a JSON object with a \"prompt\" field, or \"messages\": a list of "
                "{\"role\": \"user\" or \"assistant\", \"content\": text} that ends with the user's turn")
    try:
        record = json.loads(line)
    except ValueError:
        raise UserError(expected) from None
    if isinstance(record, dict) and "prompt" in record:
        return str(record["prompt"])
    messages = record.get("messages") if isinstance(record, dict) else None
    if (not isinstance(messages, list) or not messages
            or not all(isinstance(m, dict) and m.get("role") in ("user", "assistant")
                       and isinstance(m.get("content"), str) for m in messages)
            or messages[-1]["role"] != "user"):
        raise UserError(expected)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# ----------------------------------------------------------------------------- report


def shown(turn: dict) -> str:
    return f"{turn['role'].title()}: {turn['content']}"


def metrics_table(summaries: dict[str, dict]) -> list[str]:
    """Rows of the summary table, one per model, in markdown (also readable as plain text)."""
    rows = ["| model | clean stop | role leak | repetition | mean tokens | tokens/s |",
            "|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        rows.append(f"| {name} | {s['clean_stop_rate']:.0%} | {s['role_leak_rate']:.0%} | "
                    f"{s['repetition_rate']:.0%} | {s['mean_answer_tokens']:.0f} | {s['tokens_per_second']:.1f} |")
    return rows


def print_answers(results: dict[str, list[Answer]]) -> None:
    names = list(results)
    for i, first in enumerate(results[names[0]]):
        print("\n" + "=" * WIDTH)
        for turn in first.earlier:
            print(textwrap.fill(shown(turn), WIDTH))
        print(textwrap.fill(f"User: {first.prompt}", WIDTH))
        for name in names:
            answer = results[name][i]
            flags = ", ".join(flag for flag, on in (("stopped cleanly", answer.clean_stop),
                                                    ("role leak", answer.role_leak),
                                                    ("repetition", answer.repetition)) if on) or "ran to the limit"
            print(f"\n--- {name} ({answer.new_tokens} tokens; {flags}) " .ljust(WIDTH, "-"))
            for paragraph in (answer.text or "(empty)").splitlines():
                print(textwrap.fill(paragraph, WIDTH) if paragraph.strip() else "")


def write_report(folder: Path, models: dict[str, str], decoding: Decoding, results: dict[str, list[Answer]],
                 summaries: dict[str, dict]) -> None:
    report = {"models": models, "decoding": dataclasses.asdict(decoding), "summary": summaries,
              "answers": {name: [dataclasses.asdict(a) for a in answers] for name, answers in results.items()}}
    (folder / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# {' vs '.join(models)}", "", *(f"- **{name}**: `{path}`" for name, path in models.items()),
             f"- decoding: {decoding.describe()}, up to {decoding.max_new_tokens} new tokens",
             "", *metrics_table(summaries), ""]
    names = list(results)
    for i, answer in enumerate(results[names[0]]):
        lines += [f"## User: {answer.prompt}", ""]
        if answer.earlier:
            lines += ["Earlier in this conversation:", "", *(f"> {shown(turn)}  " for turn in answer.earlier), ""]
        for name in names:
            lines += [f"**{name}**", "", "```", results[name][i].text, "```", ""]
    (folder / REPORT_MD).write_text("\n".join(lines))
