"""Tokenized chats, made once: several processes for many chats, then kept on disk for the next run.

An entry is keyed by everything the tokens depend on (cache_key): the chats, the tokenizer and its chat
template, max_length, and masking.py's own code, so that editing any of them tokenizes again. It is
written aside and renamed (never half-written), loaded memory-mapped, and the newest KEEP_CACHED are
kept. A cache that cannot be written (read-only home, full disk) costs only the caching.
"""

import hashlib
import json
import shutil
import sys
import tempfile
import time
import weakref
from pathlib import Path

from sft.data import masking
from sft.errors import UserError

PARALLEL_FROM = 2000  # chats; below this, starting worker processes costs more than it saves
KEEP_CACHED = 8  # tokenized sets kept on disk, newest first


def default_dir() -> Path:
    from sft.offline_kit import cache_dir

    return cache_dir() / "tokenized"


def tokenize_workers(count: int) -> int:
    """Processes for tokenizing `count` chats: the cores this training process may use, up to 8."""
    from sft.distributed import cores_per_process

    return min(cores_per_process(), 8) if count >= PARALLEL_FROM else 1


def _encode_row(row, tokenizer, max_length):
    encoded = masking.encode_chat(tokenizer, row["messages"], max_length)
    if encoded is None:
        return {"input_ids": [], "labels": [], "truncated": False}
    return {"input_ids": encoded.input_ids, "labels": encoded.labels, "truncated": encoded.truncated}


_tokenizer_fingerprints = weakref.WeakKeyDictionary()


def cache_key(tokenizer, conversations, max_length) -> str:
    """Everything the encoded chats depend on: the chats, the tokenizer (vocabulary, merges, special
    tokens, chat template), max_length, and masking.py's code, so that editing it re-tokenizes."""
    if tokenizer not in _tokenizer_fingerprints:  # a large vocabulary takes a moment to serialize: once
        backend = getattr(tokenizer, "backend_tokenizer", None)
        vocabulary = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
        _tokenizer_fingerprints[tokenizer] = hashlib.sha256(vocabulary.encode()).hexdigest()
    digest = hashlib.sha256()
    for part in (Path(masking.__file__).read_text(), _tokenizer_fingerprints[tokenizer], str(len(tokenizer)),
                 tokenizer.chat_template or "", json.dumps(tokenizer.special_tokens_map, sort_keys=True),
                 str(max_length), json.dumps(list(conversations), sort_keys=True, default=str)):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:32]


def tokenize_chats(tokenizer, conversations, max_length, workers: int | None = None, cache_dir: Path | None = None):
    """(datasets.Dataset of input_ids + labels or None if every chat was dropped, counts for the report).

    Many chats are encoded by several processes (datasets.map), in the same order. With `cache_dir`,
    the result is loaded from there when an earlier run made it, and stored there otherwise."""
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
        encoded = table.map(_encode_row, fn_kwargs=kwargs, num_proc=workers, remove_columns=["messages"]).to_list()
    else:
        encoded = [_encode_row({"messages": messages}, **kwargs) for messages in conversations]
    rows = [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in encoded if row["input_ids"]]
    stats = {"kept": len(rows), "dropped": len(encoded) - len(rows), "truncated": sum(r["truncated"] for r in encoded),
             "tokens": sum(len(r["input_ids"]) for r in rows),
             "trained_tokens": sum(label != masking.IGNORE_INDEX for r in rows for label in r["labels"])}
    dataset = Dataset.from_list(rows) if rows else None
    if entry is not None:
        dataset = _store(entry, dataset, stats)
    return dataset, {**stats, "cached": False}


def _store(entry: Path, dataset, stats: dict):
    """Write a cache entry whole or not at all (written aside, then renamed), keep the newest KEEP_CACHED,
    and return the dataset read back from disk (memory-mapped)."""
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


def tokenize_for_training(tokenizer, chats, max_length: int):
    """(train set, held-out set or None, counts): tokens and labels, kept on disk for the next run
    (this module). Prints the counts and the first training example with its trained tokens marked."""

    cache = default_dir()
    train_set, train_stats = tokenize_chats(tokenizer, chats.train, max_length, cache_dir=cache)
    eval_set, eval_stats = tokenize_chats(tokenizer, chats.eval, max_length, cache_dir=cache)
    if train_set is None:
        raise UserError(f"no training conversation fits --max-length {max_length} "
                        f"(all {len(chats.train)} were dropped): raise --max-length")
    stats = {**train_stats, "dropped": train_stats["dropped"] + eval_stats["dropped"],
             "truncated": train_stats["truncated"] + eval_stats["truncated"]}
    print(f"  {stats['tokens']:,} training tokens, of which {stats['trained_tokens']:,} are trained "
          f"({stats['trained_tokens'] / stats['tokens']:.0%}: the assistant's answers)"
          + (", tokenized by an earlier run (cached)." if stats["cached"] else "."))
    if stats["dropped"] or stats["truncated"]:
        print(f"  max_length {max_length}: {stats['dropped']} conversations dropped (first answer too long), "
              f"{stats['truncated']} cut after their last whole answer.")
    print("\nFirst training example (highlighted = trained tokens; the rest only gives context):\n")
    first = train_set[0]
    print(masking.show_trained_tokens(tokenizer, first["input_ids"], first["labels"], sys.stdout.isatty()))
    return train_set, eval_set, stats
