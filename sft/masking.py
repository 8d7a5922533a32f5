"""Mask: turn a conversation into token ids plus the mask of tokens the model is trained on.

Only the assistant's words are trained: every token of each answer, and the end-of-text token that
closes it (so the model learns to stop). User text, role labels and padding get label -100.

Why not simply `tokenizer.apply_chat_template(..., return_assistant_tokens_mask=True)`? Two reasons:
  * It tokenizes the rendered text in one piece, so a message that contains the text "<|endoftext|>"
    would become the real special token: a user could forge the end of a turn. Here message text
    never becomes a special token; only the template's own BOS/EOS do.
  * A long conversation must be cut at a turn boundary, so every kept sequence ends with a whole
    answer and its end-of-text token; plain truncation would cut an answer in half.
For ordinary text the ids are exactly those of `apply_chat_template` (tested).
"""

import hashlib
import itertools
import json
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from transformers.utils.chat_template_utils import render_jinja_template

IGNORE_INDEX = -100  # label value the loss skips


@dataclass
class EncodedChat:
    input_ids: list[int]
    assistant_masks: list[int]  # 1 where the token is trained
    truncated: bool  # later turns were cut to fit max_length


def encode_chat(tokenizer, messages: list[dict], max_length: int | None = None) -> EncodedChat | None:
    """Tokenize one conversation with its trained-token mask; None if not even its first answer fits."""
    (text,), (answer_spans,) = render_jinja_template(
        conversations=[messages],
        chat_template=tokenizer.chat_template,
        return_assistant_tokens_mask=True,
        **tokenizer.special_tokens_map,
    )
    # The special tokens the template itself wrote: a BOS at the start, an EOS closing each answer.
    specials = {}  # start character -> (end character, token id)
    bos = tokenizer.bos_token
    if bos and "bos_token" in tokenizer.chat_template and text.startswith(bos):
        specials[0] = (len(bos), tokenizer.bos_token_id)
    eos = tokenizer.eos_token
    for _, end in answer_spans:
        assert text[end - len(eos) : end] == eos, "the chat template must end each answer with eos_token"
        specials[end - len(eos)] = (end, tokenizer.eos_token_id)

    input_ids, char_starts, answer_ends = [], [], []
    position = 0
    for start in sorted(specials) + [len(text)]:
        if start > position:  # plain text: its special-token look-alikes stay plain text
            piece = tokenizer(
                text[position:start],
                add_special_tokens=False,
                split_special_tokens=True,
                return_offsets_mapping=True,
            )
            input_ids += piece["input_ids"]
            char_starts += [position + offset[0] for offset in piece["offset_mapping"]]
        if start == len(text):
            break
        end, token_id = specials[start]
        input_ids.append(token_id)
        char_starts.append(start)
        if token_id == tokenizer.eos_token_id and start != 0:
            answer_ends.append(len(input_ids))
        position = end

    mask = [int(any(s <= char < e for s, e in answer_spans)) for char in char_starts]

    # Keep the longest prefix that ends right after an answer's end-of-text token.
    keep = len(input_ids) if max_length is None else max((n for n in answer_ends if n <= max_length), default=0)
    if keep == 0:
        return None
    return EncodedChat(input_ids[:keep], mask[:keep], truncated=keep < answer_ends[-1])


PARALLEL_FROM = 2000  # chats; below this, starting worker processes costs more than it saves
KEEP_CACHED = 8  # tokenized sets kept on disk, newest first


def tokenize_workers(count: int) -> int:
    """Processes for tokenizing `count` chats: the cores this training process may use, up to 8."""
    from .distributed import cores_per_process

    return min(cores_per_process(), 8) if count >= PARALLEL_FROM else 1


def _encode_row(row, tokenizer, max_length):
    encoded = encode_chat(tokenizer, row["messages"], max_length)
    if encoded is None:
        return {"input_ids": [], "assistant_masks": [], "truncated": False}
    return {"input_ids": encoded.input_ids, "assistant_masks": encoded.assistant_masks,
            "truncated": encoded.truncated}


_tokenizer_fingerprints = weakref.WeakKeyDictionary()


def cache_key(tokenizer, conversations, max_length) -> str:
    """Everything the encoded chats depend on: the chats, the tokenizer (vocabulary, merges, special
    tokens, chat template), max_length, and this file's own code, so that editing it re-tokenizes."""
    if tokenizer not in _tokenizer_fingerprints:  # a large vocabulary takes a moment to serialize: once
        backend = getattr(tokenizer, "backend_tokenizer", None)
        vocabulary = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
        _tokenizer_fingerprints[tokenizer] = hashlib.sha256(vocabulary.encode()).hexdigest()
    digest = hashlib.sha256()
    for part in (Path(__file__).read_text(), _tokenizer_fingerprints[tokenizer], str(len(tokenizer)),
                 tokenizer.chat_template or "", json.dumps(tokenizer.special_tokens_map, sort_keys=True),
                 str(max_length), json.dumps(list(conversations), sort_keys=True, default=str)):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:32]


def tokenize_chats(tokenizer, conversations, max_length, workers: int | None = None, cache_dir: Path | None = None):
    """Encode chats into a datasets.Dataset of input_ids + assistant_masks, with counts for the report.

    Many chats are encoded by several processes (datasets.map), in the same order. With `cache_dir`,
    the result is kept on disk under a key of everything it depends on (cache_key): the next run on
    the same chats loads it instead, memory-mapped, and so do the label and truncation passes that
    SFTTrainer runs over it (datasets caches them next to it)."""
    from datasets import Dataset, load_from_disk

    entry = cache_dir / cache_key(tokenizer, conversations, max_length) if cache_dir else None
    if entry is not None and (entry / "stats.json").exists():
        try:
            stats = {**json.loads((entry / "stats.json").read_text()), "cached": True}
            dataset = load_from_disk(str(entry / "chats")) if stats["kept"] else None
            entry.touch()  # newest first when pruning
            return dataset, stats
        except (OSError, ValueError, KeyError):  # damaged by hand or by a full disk: tokenize again
            shutil.rmtree(entry, ignore_errors=True)

    workers = workers or tokenize_workers(len(conversations))
    kwargs = {"tokenizer": tokenizer, "max_length": max_length}
    if workers > 1:
        table = Dataset.from_dict({"messages": list(conversations)})
        encoded = table.map(_encode_row, fn_kwargs=kwargs, num_proc=workers, remove_columns=["messages"])
        encoded = encoded.to_list()
    else:
        encoded = [_encode_row({"messages": messages}, **kwargs) for messages in conversations]
    rows, dropped, truncated = [], 0, 0
    for row in encoded:
        if not row["input_ids"]:
            dropped += 1
            continue
        truncated += row["truncated"]
        rows.append({"input_ids": row["input_ids"], "assistant_masks": row["assistant_masks"]})
    stats = {"kept": len(rows), "dropped": dropped, "truncated": truncated,
             "tokens": sum(len(r["input_ids"]) for r in rows),
             "trained_tokens": sum(sum(r["assistant_masks"]) for r in rows)}
    dataset = Dataset.from_list(rows) if rows else None
    if entry is not None:
        dataset = _store(entry, dataset, stats)
    return dataset, {**stats, "cached": False}


def _store(entry: Path, dataset, stats: dict):
    """Write a cache entry whole or not at all (written aside, then renamed), keep the newest KEEP_CACHED,
    and return the dataset read back from disk, so that later passes over it are cached too. A cache
    that cannot be written (read-only home, full disk) costs only the caching."""
    from datasets import load_from_disk

    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".partial-"))
    except OSError:
        return dataset
    try:
        if dataset is not None:
            dataset.save_to_disk(str(partial / "chats"))
        (partial / "stats.json").write_text(json.dumps(stats))
        partial.rename(entry)
    except OSError:  # another process (accelerate launch) stored the same chats first, or the disk is full
        return dataset
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _prune(entry)
    return load_from_disk(str(entry / "chats")) if dataset is not None else None


def _prune(keep: Path) -> None:
    """Keep the newest KEEP_CACHED entries, and no half-written one older than an hour (a killed run's)."""
    def age(path):
        try:
            return time.time() - path.stat().st_mtime
        except OSError:  # removed meanwhile by another process
            return 0.0

    entries = sorted(keep.parent.iterdir(), key=age)
    finished = [p for p in entries if not p.name.startswith(".partial-")]
    abandoned = [p for p in entries if p.name.startswith(".partial-") and age(p) > 3600]
    for old in finished[KEEP_CACHED:] + abandoned:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def show_trained_tokens(tokenizer, input_ids: list[int], assistant_masks: list[int], color: bool) -> str:
    """The sequence as text, with trained tokens highlighted (green, or between [[ ]] without colour)."""
    open_mark, close_mark = ("\033[42;30m", "\033[0m") if color else ("[[", "]]")
    parts = []
    for trained, run in itertools.groupby(zip(input_ids, assistant_masks), key=lambda pair: pair[1]):
        piece = tokenizer.decode([token_id for token_id, _ in run])
        parts.append(f"{open_mark}{piece}{close_mark}" if trained else piece)
    return "".join(parts)
