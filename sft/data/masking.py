"""Mask: turn a conversation into token ids and labels, the token each position is trained to produce.

Only the assistant's words are trained: every token of each answer, and the end-of-text token that
closes it (so the model learns to stop). Their label is the token itself; user text and role labels
get IGNORE_INDEX, which the loss skips, and so does padding (the collator pads labels with it).

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

IGNORE_INDEX = -100  # the label of a token that is not trained: PyTorch's cross-entropy skips it

SHOW_TOKENS = 400  # a longer first example is shown with its middle left out


@dataclass
class EncodedChat:
    input_ids: list[int]
    labels: list[int]  # the token itself where it is trained, IGNORE_INDEX elsewhere
    truncated: bool  # later turns were cut to fit max_length


def encode_chat(tokenizer, messages: list[dict], max_length: int | None = None) -> EncodedChat | None:
    """Tokenize one conversation with its labels; None if not even its first answer fits in max_length."""
    (text,), (answer_spans,) = render_jinja_template(
        conversations=[messages],
        chat_template=tokenizer.chat_template,
        return_assistant_tokens_mask=True,
        **tokenizer.special_tokens_map,
    )
    input_ids, char_starts, answer_ends = _tokenize_rendered(tokenizer, text, answer_spans)
    trained = [any(start <= char < end for start, end in answer_spans) for char in char_starts]
    labels = [token if is_trained else IGNORE_INDEX for token, is_trained in zip(input_ids, trained)]

    # Keep the longest prefix that ends right after an answer's end-of-text token.
    keep = len(input_ids) if max_length is None else max((n for n in answer_ends if n <= max_length), default=0)
    if keep == 0:
        return None
    return EncodedChat(input_ids[:keep], labels[:keep], truncated=keep < answer_ends[-1])


def _tokenize_rendered(tokenizer, text: str, answer_spans):
    """(ids, the character each token starts at, the token counts that end right after an answer).

    Plain text is tokenized with its special-token look-alikes kept as text; only the template's own
    BOS at the start and the EOS closing each answer become special tokens."""
    specials = {}  # start character -> (end character, token id)
    bos = tokenizer.bos_token
    if bos and "bos_token" in tokenizer.chat_template and text.startswith(bos):
        specials[0] = (len(bos), tokenizer.bos_token_id)
    eos = tokenizer.eos_token
    for _, end in answer_spans:
        assert text[end - len(eos):end] == eos, "the chat template must end each answer with eos_token"
        specials[end - len(eos)] = (end, tokenizer.eos_token_id)

    input_ids, char_starts, answer_ends = [], [], []
    position = 0
    for start in sorted(specials) + [len(text)]:
        if start > position:
            piece = tokenizer(text[position:start], add_special_tokens=False, split_special_tokens=True,
                              return_offsets_mapping=True)
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
    return input_ids, char_starts, answer_ends


def show_trained_tokens(tokenizer, input_ids: list[int], labels: list[int], color: bool,
                        limit: int = SHOW_TOKENS) -> str:
    """The sequence as text, trained tokens highlighted (green, or between [[ ]] without colour); a
    sequence over `limit` tokens is shown as its start and end, with a count of what was left out."""
    if len(input_ids) > limit:
        head, tail = limit * 3 // 5, limit * 2 // 5
        left_out = len(input_ids) - head - tail
        return (show_trained_tokens(tokenizer, input_ids[:head], labels[:head], color, limit)
                + f"\n[... {left_out:,} tokens left out ...]\n"
                + show_trained_tokens(tokenizer, input_ids[-tail:], labels[-tail:], color, limit))
    open_mark, close_mark = ("\033[42;30m", "\033[0m") if color else ("[[", "]]")
    parts = []
    for trained, run in itertools.groupby(zip(input_ids, labels), key=lambda pair: pair[1] != IGNORE_INDEX):
        piece = tokenizer.decode([token_id for token_id, _ in run])
        parts.append(f"{open_mark}{piece}{close_mark}" if trained else piece)
    return "".join(parts)
