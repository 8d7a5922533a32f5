"""Preference pairs for DPO: a prompt, the answer to prefer (chosen) and one to avoid (rejected), as messages.

    {"prompt":   [{"role": "user", "content": "How many legs does a spider have?"}],
     "chosen":   [{"role": "assistant", "content": "A spider has eight legs."}],
     "rejected": [{"role": "assistant", "content": "1"}]}

This is TRL's conversational preference format: DPOTrainer renders each part with the SFT model's chat
template, so the pairs are trained in exactly the format the chatbot answers in. Where pairs come from:

    a Hub dataset    HuggingFaceH4/ultrafeedback_binarized (the default; split train_prefs): prompts with a
                     higher- and a lower-rated answer, rated by GPT-4 (the zephyr recipe's DPO data)
    a local file     prompt/chosen/rejected columns, each as plain text or as messages; chosen and rejected
                     may also be whole conversations that start with the prompt (.jsonl/.json/.parquet/.csv)
    self-generated   no Hub (the kit, or --offline): the kit's chats, chosen = the corpus answer, rejected =
                     the SFT model's own sampled answer to the same request, generated once and cached. DPO
                     then pushes the model from what it says now towards what its teacher said (SPIN's
                     recipe: Chen et al., 2024, "Self-Play Fine-Tuning"). With --stop-before-loops, where the
                     model's answer loops, the chosen one is that answer cut before its loop: the pair then
                     differs only in stopping there or looping on.
    kit-loops        the kit's chats with no generation at all: chosen = the corpus answer, rejected = the same
                     answer up to a sentence or line picked at random, then that sentence said again and again,
                     as a small model's greedy answer loops, left open: no end of turn closes it, as none closes
                     a greedy loop before the token limit. The shared beginning cancels out of DPO's loss, so what
                     is left is going on (or stopping) against repeating.

Pairs whose prompt shares 8 words in a row with an IFEval prompt are dropped (the evaluation scores on
those), as are pairs whose chosen and rejected answers are the same.
"""

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from sft.data import kit, load
from sft.errors import UserError, first_line
from sft.offline_kit import cache_dir

SELF_GENERATED = "self-generated"  # --pairs name of the offline pairs (also their name in the metadata)
KIT_LOOPS = "kit-loops"  # --pairs name of the offline pairs whose rejected answer is the corpus answer made to loop
KIT_PAIRS = (SELF_GENERATED, KIT_LOOPS)  # the --pairs names built from the offline kit's chats
LOOP_REPEATS = 3  # times a kit-loops rejected answer says its sentence again
TURN_END_TOKENS = 3  # the most tokens a chat template closes an answer with (<eos>; <end_of_turn> and a newline)
PAIR_FIELDS = ("prompt", "chosen", "rejected")
ROLES = ("system", "user", "assistant")  # what the chat template renders
GENERATION_BATCH = 32  # answers generated together on a CPU (64 on a GPU), as in compare and eval

Messages = list[dict]


@dataclass
class PairData:
    train: list[dict]  # {"prompt": messages, "chosen": messages, "rejected": messages}
    eval: list[dict]
    source: str  # "hub", "local" or "offline-kit"
    name: str  # what was loaded
    split: str
    rejected_from: str  # who wrote the rejected answers
    notices: list[str] = field(default_factory=list)
    dropped: dict = field(default_factory=dict)  # why pairs were left out -> how many


# --- one record -> a pair ------------------------------------------------------------------------
def as_messages(value, role: str, what: str) -> Messages:
    """Plain text becomes one message of `role`; a list of {role, content} messages is checked and kept."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                  and m.get("role") in ROLES for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise load.RecordError(f"{what} must be text or a list of {{role, content}} messages with text content and "
                           f"roles {', '.join(ROLES)}")


def to_pair(record: dict) -> dict:
    """A record with prompt/chosen/rejected (text or messages) as a conversational pair. Chosen and rejected may
    repeat the prompt in front of the answer (UltraFeedback does): that part is cut off."""
    missing = [name for name in PAIR_FIELDS if record.get(name) in (None, "", [])]
    if missing:
        raise load.RecordError(f"missing or empty {', '.join(missing)}")
    prompt = as_messages(record["prompt"], "user", "prompt")
    pair = {"prompt": prompt}
    for side in ("chosen", "rejected"):
        answer = as_messages(record[side], "assistant", side)
        if answer[:len(prompt)] == prompt:
            answer = answer[len(prompt):]
        if not answer or any(m["role"] != "assistant" for m in answer) or not answer[-1]["content"].strip():
            raise load.RecordError(f"{side} must be the assistant's answer alone, or the prompt followed by it")
        pair[side] = answer
    if prompt[-1]["role"] != "user":
        raise load.RecordError("the prompt must end with a user message")
    return pair


def sample_pairs(table, num_train: int, num_eval: int, seed: int, name: str) -> tuple[list[dict], list[dict]]:
    """(train, held-out) pairs from the records of `table` in a seeded order, the first `num_eval` held out. Only
    the records needed are converted (UltraFeedback has 61k)."""
    order = list(range(len(table)))
    random.Random(seed).shuffle(order)
    num_eval = min(num_eval, len(order) // 2)
    pairs = []
    for index in order[:num_eval + num_train]:
        try:
            pairs.append(to_pair(table[index]))
        except load.RecordError as error:
            raise UserError(f"{name}, record {index + 1}: {error}. Each record needs prompt, chosen and rejected, "
                            "each as text or as a list of {role, content} messages (see README: your own "
                            "data)") from None
    return pairs[num_eval:], pairs[:num_eval]


def keep_pairs(pairs: list[dict], name: str, required: bool = True) -> tuple[list[dict], dict]:
    """The pairs DPO can learn from and that do not touch the evaluation: (kept, {reason: how many dropped}).
    `required`: none kept is an error (for the training pairs; held-out ones may run out)."""
    from sft.eval.ifeval import prompts as ifeval_prompts

    ifeval_runs = set().union(*(kit.word_runs(item["prompt"]) for item in ifeval_prompts(None)))
    kept, dropped = [], {"chosen equals rejected": 0, "prompt overlaps IFEval": 0}
    for pair in pairs:
        if pair["chosen"] == pair["rejected"]:
            dropped["chosen equals rejected"] += 1
        elif any(kit.word_runs(m["content"]) & ifeval_runs for m in pair["prompt"]):
            dropped["prompt overlaps IFEval"] += 1
        else:
            kept.append(pair)
    if not kept and required:
        reasons = ", ".join(f"{n} dropped: {why}" for why, n in dropped.items() if n) or "none were read"
        raise UserError(f"{name}: no usable pair to train on ({reasons}). Chosen and rejected must differ for DPO to "
                        "learn anything, and no prompt may come from IFEval (the evaluation scores on those)")
    return kept, dropped


# --- where pairs come from -----------------------------------------------------------------------
def read_pair_records(name: str, split: str, offline: bool, hub_available) -> tuple:
    """(table, source, split) of a local file or a Hub dataset; (None, ...) when the Hub is out of reach."""
    path = Path(name).expanduser()
    if path.exists():
        table, split = load.read_local(path, split)
        return table, "local", split
    if load.looks_like_path(name):
        raise UserError(f"pairs file {name} does not exist: check the path, or pass a Hub dataset name")
    table = load.read_hub_cache(name, split) if offline or not hub_available() else None
    if table is None and not offline and hub_available():
        try:
            table = load.read_hub(name, split)
        except Exception as error:
            raise UserError(f"could not load pairs {name!r} (split {split!r}) from the Hub: {first_line(error)}") \
                from None
    return table, "hub", split


def load_pairs(s, model, tokenizer, hub_available) -> PairData:
    """NUM_PAIRS pairs to train on and EVAL_PAIRS held out, from PAIRS; self-generated ones when PAIRS is
    self-generated or the Hub is out of reach. Prints what was loaded, and why if it is not what was asked."""
    from sft.console import banner

    notices, records = [], None
    if s.pairs not in KIT_PAIRS:
        records, source, split = read_pair_records(s.pairs, s.pairs_split, s.offline, hub_available)
        if records is None:
            why = "--offline" if s.offline else "The Hub is unreachable"
            notices.append(f"{why} and {s.pairs} is not in the local cache: building pairs from the offline kit's "
                           f"chats instead ({SELF_GENERATED}).")
    if s.pairs == KIT_LOOPS:
        pairs = kit_loop_pairs(s, notices)
    elif records is None:
        pairs = self_generated_pairs(s, model, tokenizer, notices)
    else:
        train, held_out = sample_pairs(records, s.num_pairs, s.eval_pairs, s.seed, s.pairs)
        pairs = PairData(train, held_out, source, s.pairs, split, "the dataset", notices)
    pairs.train, pairs.dropped = keep_pairs(pairs.train, pairs.name)
    pairs.eval, eval_dropped = keep_pairs(pairs.eval, pairs.name, required=False)
    pairs.dropped = {why: n + eval_dropped[why] for why, n in pairs.dropped.items()}  # training and held-out
    for notice in pairs.notices:
        banner(("OFFLINE: " if pairs.source == "offline-kit" else "NOTE: ") + notice)
    dropped = ", ".join(f"{n} dropped: {why}" for why, n in pairs.dropped.items() if n)
    print(f"\nPairs: {pairs.name} [from {pairs.source}]: {len(pairs.train)} to train on, {len(pairs.eval)} held out"
          f"{f' ({dropped})' if dropped else ''}. Rejected answers: {pairs.rejected_from}.")
    return pairs


# --- self-generated pairs (offline) --------------------------------------------------------------
def self_generated_pairs(s, model, tokenizer, notices: list[str]) -> PairData:
    """The kit's chats as pairs: the corpus answer chosen, the SFT model's own sampled answer rejected (with
    STOP_BEFORE_LOOPS, an answer that loops has itself, cut before the loop, as the chosen one). Training pairs
    come from the kit's pool, held-out pairs from its test split (never trained on by SFT or DPO)."""
    chats, num_train = kit_chats(s, notices)
    rejected = sft_answers(s, model, tokenizer, [chat[:-1] for chat in chats])
    own = [cut_before_loop(answer) if s.stop_before_loops else "" for answer in rejected]  # "": the corpus answer
    pairs = [{"prompt": chat[:-1], "chosen": [{"role": "assistant", "content": cut}] if cut else chat[-1:],
              "rejected": [{"role": "assistant", "content": answer}]}
             for chat, cut, answer in zip(chats, own, rejected)]
    cuts = f"; for the {sum(map(bool, own))} that loop, that answer cut before its loop" if s.stop_before_loops else ""
    return PairData(pairs[:num_train], pairs[num_train:], "offline-kit", SELF_GENERATED, "-",
                    f"the SFT model's own ({rejected_decoding(s).describe()}, up to {s.rejected_max_new_tokens} "
                    f"tokens); chosen: the corpus answers ({kit.SHAREGPT}){cuts}", notices)


def kit_chats(s, notices: list[str]) -> tuple[list, int]:
    """(chats, how many to train on): NUM_PAIRS of the kit's pool in a seeded order, then EVAL_PAIRS of its test
    split."""
    pool, test = kit.sharegpt_exchanges()
    random.Random(s.seed).shuffle(pool)
    random.Random(s.seed).shuffle(test)
    if s.num_pairs > len(pool):
        notices.append(f"{kit.SHAREGPT} has {len(pool)} training conversations: {len(pool)} pairs, not "
                       f"{s.num_pairs}.")
    return pool[:s.num_pairs] + test[:min(s.eval_pairs, len(test))], min(s.num_pairs, len(pool))


def kit_loop_pairs(s, notices: list[str]) -> PairData:
    """The kit's chats as pairs with nothing generated: the corpus answer chosen, the same answer looping from a
    sentence picked at random rejected. Training pairs from the kit's pool, held-out pairs from its test split."""
    chats, num_train = kit_chats(s, notices)
    rng = random.Random(s.seed)
    pairs = [{"prompt": chat[:-1], "chosen": chat[-1:],
              "rejected": [{"role": "assistant", "content": looping(chat[-1]["content"], rng)}]} for chat in chats]
    return PairData(pairs[:num_train], pairs[num_train:], "offline-kit", KIT_LOOPS, "-",
                    f"the corpus answer up to a sentence or line picked at random, then that one said {LOOP_REPEATS} "
                    f"times more, left open (no end of turn); chosen: the corpus answers ({kit.SHAREGPT})", notices)


def leave_loops_open(trainer, tokenizer) -> None:
    """The rejected answers of kit-loops pairs, as DPOTrainer tokenized them, without the end of turn the chat
    template closes them with (a special token among their last few, and only whitespace after it): a greedy loop
    runs on to the token limit, so DPO lowers saying the sentence again, not stopping after it. The chosen answers
    keep theirs."""
    special = set(tokenizer.all_special_ids)

    def open_ended(pair: dict) -> dict:
        ids = pair["rejected_ids"]
        for i in range(max(len(ids) - TURN_END_TOKENS, 0), len(ids)):
            if ids[i] in special and not tokenizer.decode(ids[i:], skip_special_tokens=True).strip():
                return {"rejected_ids": ids[:i]}
        return {"rejected_ids": ids}

    def opened(data, which: str):
        after = data.map(open_ended)
        count = sum(len(a) < len(b) for a, b in zip(after["rejected_ids"], data["rejected_ids"]))
        return after, f"{count} of {len(data)} {which}"

    trainer.train_dataset, counts = opened(trainer.train_dataset, "to train on")
    if trainer.eval_dataset is not None:
        trainer.eval_dataset, held_out = opened(trainer.eval_dataset, "held out")
        counts += ", " + held_out
    print(f"Rejected loops left open (no end of turn after them): {counts}.")


def looping(answer: str, rng: random.Random) -> str:
    """`answer` up to the end of one of its sentences or lines, picked at random, then that sentence or line again
    LOOP_REPEATS times: the shape of a greedy loop."""
    text, units, start = answer.rstrip() + "\n", [], 0
    for match in _SENTENCE_OR_LINE_END.finditer(text):
        if text[start:match.end()].strip():
            units.append((start, match.end()))
        start = match.end()
    start, end = rng.choice(units)
    whole_line = text[start - 1:start] in ("", "\n") and "\n" in text[end - 1:end + 1]
    joiner = "\n" if whole_line else " "  # a line (a list item) again on a line of its own, a sentence in line
    return text[:end].rstrip() + (joiner + text[start:end].strip()) * LOOP_REPEATS


_SENTENCE_OR_LINE_END = re.compile(r"(?<!\d)[.!?](?=\s)|\n")  # not the "1." of a numbered list
_UNIT_END = re.compile(r"[.!?](?=\s)|\n")  # where a sentence or a line ends
_UNFINISHED = re.compile(r"(:|^\s*([-*]|\d+[.)]))\s*$")  # a last line that announces more: "Steps:", "3."
MIN_OWN_WORDS = 5  # shorter than this before its loop: the corpus answer stays the chosen one


def cut_before_loop(answer: str) -> str:
    """The answer up to the end of its last sentence or line before it starts to repeat itself (compare's
    repetition check, or a sentence said again), without a last line that announces more; "" when the answer does
    not loop, or loops within its first MIN_OWN_WORDS words. DPO then prefers stopping there to going on: the
    shared beginning cancels out of its loss, leaving the end-of-text against the loop."""
    from sft.eval.compare import cut_at_role, has_repetition

    if not has_repetition(answer):
        return ""
    answer, kept, seen = cut_at_role(answer), "", set()
    for end in (match.end() for match in _UNIT_END.finditer(answer + "\n")):
        prefix = answer[:end].rstrip()
        if prefix == kept or not prefix:
            continue  # a line that ends where its sentence did
        sentence = re.split(r"(?<=[.!?])\s+|\n", prefix)[-1].strip().lower()
        if has_repetition(prefix) or sentence in seen:
            break
        seen.add(sentence)
        if not _UNFINISHED.search(prefix.rsplit("\n", 1)[-1]):
            kept = prefix
    return kept if len(kept.split()) >= MIN_OWN_WORDS else ""


def sft_answers(s, model, tokenizer, prompts: list[Messages]) -> list[str]:
    """The model's sampled answer to each prompt, from the cache when these prompts were answered before by the
    same model folder with the same settings; generated (with a progress bar) and cached otherwise. An answer
    cut at the token limit is kept as it is: the chat template closes it with end-of-text like any other."""
    cached = answers_cache(s, prompts)
    if cached.exists():
        print(f"Rejected answers: the SFT model's, read from {cached}.")
        return json.loads(cached.read_text(encoding="utf-8"))
    answers = generate(model, tokenizer, prompts, s)
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(answers), encoding="utf-8")
    staging.replace(cached)  # whole or absent
    return answers


def answers_cache(s, prompts: list[Messages]) -> Path:
    """The cache file for these prompts answered by this SFT folder's weights (their size and time) this way."""
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(s.sft_model).glob("*.safetensors"))
    key = json.dumps([str(Path(s.sft_model).resolve()), weights, prompts, s.rejected_max_new_tokens,
                      s.rejected_temperature, s.seed])
    return cache_dir() / "dpo-rejected" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def rejected_decoding(s):
    """Sampled as in the chat (what users see), or greedy at temperature 0 (what eval scores: its loops)."""
    from sft.generation import Decoding

    return Decoding(max_new_tokens=s.rejected_max_new_tokens, sample=s.rejected_temperature > 0,
                    temperature=s.rejected_temperature, top_p=0.9, seed=s.seed)


def generate(model, tokenizer, prompts: list[Messages], s) -> list[str]:
    """compare's generation: prompts of similar length batched together, 32 on a CPU (BENCHMARKS.md)."""
    from sft.eval.compare import generate_answers

    decoding = rejected_decoding(s)
    decoding.batch_size = 64 if model.device.type == "cuda" else GENERATION_BATCH
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    answers, _ = generate_answers(model, tokenizer, prompts, decoding, name="SFT")
    model.train(was_training)
    tokenizer.padding_side = padding_side  # the saved tokenizer keeps its own
    return [answer.text for answer in answers]


def as_dataset(pairs: list[dict]):
    """The pairs as a datasets.Dataset, as DPOTrainer takes them."""
    import datasets

    return datasets.Dataset.from_list(pairs)


def token_stats(tokenized, max_length: int) -> dict:
    """Tokens through the model per pass over the pairs, as DPOTrainer tokenized and will cut them (chosen and
    rejected both carry the prompt): for the CPU time estimate. DPOTrainer leaves out pairs whose prompt alone
    fills max_length; none left is refused here."""
    if len(tokenized) == 0:
        raise UserError(f"every pair's prompt is at least --max-length {max_length} tokens long, so DPO has no "
                        "answer to learn from: raise --max-length (up to the model's context window)")
    tokens = sum(min(len(p) + len(c), max_length) + min(len(p) + len(r), max_length) for p, c, r in
                 zip(tokenized["prompt_ids"], tokenized["chosen_ids"], tokenized["rejected_ids"]))
    return {"tokens": tokens}
