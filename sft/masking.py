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

import itertools
from dataclasses import dataclass

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


def _encode_row(row, tokenizer, max_length):
    encoded = encode_chat(tokenizer, row["messages"], max_length)
    if encoded is None:
        return {"input_ids": [], "assistant_masks": [], "truncated": False}
    return {"input_ids": encoded.input_ids, "assistant_masks": encoded.assistant_masks,
            "truncated": encoded.truncated}


def tokenize_chats(tokenizer, conversations, max_length, workers: int | None = None):
    """Encode chats into a datasets.Dataset of input_ids + assistant_masks, with counts for the report.

    Many chats are encoded by several processes (datasets.map), in the same order."""
    import os

    from datasets import Dataset

    from .distributed import processes_on_this_machine

    if workers is None:
        cores = (os.cpu_count() or 1) // processes_on_this_machine()  # training processes share the cores
        workers = max(1, min(cores, 8)) if len(conversations) >= PARALLEL_FROM else 1
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
    stats = {"dropped": dropped, "truncated": truncated,
             "tokens": sum(len(r["input_ids"]) for r in rows),
             "trained_tokens": sum(sum(r["assistant_masks"]) for r in rows)}
    return Dataset.from_list(rows) if rows else None, stats


def show_trained_tokens(tokenizer, input_ids: list[int], assistant_masks: list[int], color: bool) -> str:
    """The sequence as text, with trained tokens highlighted (green, or between [[ ]] without colour)."""
    open_mark, close_mark = ("\033[42;30m", "\033[0m") if color else ("[[", "]]")
    parts = []
    for trained, run in itertools.groupby(zip(input_ids, assistant_masks), key=lambda pair: pair[1]):
        piece = tokenizer.decode([token_id for token_id, _ in run])
        parts.append(f"{open_mark}{piece}{close_mark}" if trained else piece)
    return "".join(parts)
