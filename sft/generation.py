"""Generate: answers from a model through its chat template, in batches or streamed token by token.

Shared by compare (test_chatbot.py --mode compare) and the interactive chat. The prompt is always
rendered by the fine-tuned model's chat template ("User: ...\\nAssistant:"), message text can never
become a special token, and generation stops at the end-of-text token that closes every answer.
"""

import threading
import time
from dataclasses import dataclass

from transformers import StoppingCriteria

from .errors import UserError


@dataclass
class Decoding:
    max_new_tokens: int = 150
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 42
    batch_size: int = 8

    def generate_kwargs(self, tokenizer) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.sample,
                  "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
        if self.sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        else:  # greedy: make sure no sampling setting from generation_config.json leaks in
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


def load_for_generation(source):
    """(model in eval mode on the best device, tokenizer) from a models.ModelSource."""
    import torch

    from .devices import best_device
    from .models import load_model, load_tokenizer

    tokenizer = load_tokenizer(source)
    model = load_model(source, dtype=torch.float32).to(best_device())
    return model.eval(), tokenizer


def encode_prompts(tokenizer, conversations: list[list[dict]]):
    """Left-padded batch of chat prompts; message text can never become a special token."""
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    return tokenizer.apply_chat_template(conversations, add_generation_prompt=True, sanitize_control_tokens=True,
                                         padding=True, return_tensors="pt", return_dict=True)


def too_long(what: str, length: int, context_window: int, max_new_tokens: int) -> UserError:
    budget = context_window - max_new_tokens
    return UserError(f"{what} is {length} tokens long; with {max_new_tokens} kept for the answer, the model's "
                     f"{context_window}-token context allows {max(budget, 0)}. Shorten it, or pass a smaller "
                     "--max-new-tokens.")


def check_prompt_lengths(tokenizer, prompts: list[str], context_window: int, max_new_tokens: int) -> None:
    """Refuse, before generating anything, a prompt that leaves no room for its answer."""
    for number, prompt in enumerate(prompts, start=1):
        length = encode_prompts(tokenizer, [[{"role": "user", "content": prompt}]])["input_ids"].shape[1]
        if length + max_new_tokens > context_window:
            raise too_long(f"prompt {number}", length, context_window, max_new_tokens)


def fit_history(tokenizer, history: list[dict], context_window: int, max_new_tokens: int) -> list[dict]:
    """The newest part of `history` whose prompt leaves max_new_tokens of room in the context window."""
    budget = context_window - max_new_tokens
    kept = list(history)
    while True:
        length = encode_prompts(tokenizer, [kept])["input_ids"].shape[1]
        if length <= budget:
            return kept
        if len(kept) == 1:
            raise too_long("this message", length, context_window, max_new_tokens)
        kept = kept[2:] if kept[0]["role"] == "user" and len(kept) > 2 else kept[1:]  # drop the oldest exchange


def generate_batch(model, tokenizer, conversations: list[list[dict]], decoding: Decoding, seed: int):
    """(new token ids of each answer, up to and including its first end-of-text; seconds taken)."""
    import torch

    inputs = encode_prompts(tokenizer, conversations)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    torch.manual_seed(seed)
    started = time.time()
    with torch.no_grad():
        output = model.generate(**inputs, **decoding.generate_kwargs(tokenizer))
    seconds = time.time() - started
    answers = []
    for row in output[:, inputs["input_ids"].shape[1]:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[:row.index(tokenizer.eos_token_id) + 1]
        answers.append(row)
    return answers, seconds


class StopWhenSet(StoppingCriteria):
    """A stopping criterion for generate(): stop once `event` is set (by the reader of a stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


def stream_answer(model, tokenizer, history: list[dict], decoding: Decoding, context_window: int,
                  record: dict | None = None, stop: threading.Event | None = None):
    """Yield the answer's text as it is generated. Closing the generator (e.g. on Ctrl-C), or setting `stop`,
    stops generation. Once it has ended, `record` holds the prompt's length and the answer's token ids."""
    import torch
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    inputs = encode_prompts(tokenizer, [fit_history(tokenizer, history, context_window, decoding.max_new_tokens)])
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = stop or threading.Event()

    def work():
        torch.manual_seed(decoding.seed)
        with torch.no_grad():
            output = model.generate(**inputs, **decoding.generate_kwargs(tokenizer), streamer=streamer,
                                    stopping_criteria=StoppingCriteriaList([StopWhenSet(stop)]))
        if record is not None:
            ids = output[0, inputs["input_ids"].shape[1]:].tolist()
            if tokenizer.eos_token_id in ids:
                ids = ids[:ids.index(tokenizer.eos_token_id) + 1]
            record.update(prompt_tokens=inputs["input_ids"].shape[1], ids=ids)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        stop.set()
        thread.join()


def answer_once(model, tokenizer, history, decoding, context_window, write) -> str:
    """Stream one answer to `write`; return its text (partial if interrupted, then re-raise)."""
    pieces = []
    stream = stream_answer(model, tokenizer, history, decoding, context_window)
    try:
        for piece in stream:
            pieces.append(piece)
            write(piece)
    finally:
        stream.close()
    return "".join(pieces).strip()
