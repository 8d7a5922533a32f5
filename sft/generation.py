"""Generate: answers from a model through its chat template, in batches or streamed token by token.

Shared by compare (test_chatbot.py --mode compare) and the interactive chat. The prompt is always
rendered by the fine-tuned model's chat template ("User: ...\\nAssistant:"), message text can never
become a special token, and generation stops at the end-of-text token that closes every answer.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from transformers import StoppingCriteria

from sft.errors import UserError

# Sampling divides the logits by the temperature: below this it overflows to inf, so such a temperature
# means greedy decoding (as 0 does).
MIN_TEMPERATURE = 1e-5
# How the saved model chats by default (its generation_config.json, read by local chat tools, the
# interactive and web modes): sampling with llama.cpp's and Ollama's default repeat penalty, against the
# loops of greedy decoding (bench/chat_decoding.py compares). compare and eval stay greedy, so their scores
# compare with published ones.
CHAT_DEFAULTS = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}


@dataclass
class Decoding:
    max_new_tokens: int = 150
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 42
    batch_size: int = 8
    repetition_penalty: float = 1.0  # above 1: tokens already in the prompt or answer become less likely

    def describe(self) -> str:
        penalty = f", repetition penalty {self.repetition_penalty:g}" if self.repetition_penalty != 1 else ""
        if self.sample and self.temperature >= MIN_TEMPERATURE:
            return f"sampling, temperature {self.temperature:g}, top-p {self.top_p:g}{penalty}"
        return f"greedy{penalty}"

    def generate_kwargs(self, tokenizer) -> dict:
        sample = self.sample and self.temperature >= MIN_TEMPERATURE
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": sample,
                  "repetition_penalty": float(self.repetition_penalty),  # 1.0 overrides generation_config.json's
                  "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
        if sample:  # floats: generate() refuses a temperature of 2 written as an integer
            kwargs.update(temperature=float(self.temperature), top_p=float(self.top_p))
        else:  # greedy: make sure no sampling setting from generation_config.json leaks in
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


def chat_defaults(folder) -> dict:
    """The model folder's own chat decoding (generation_config.json: do_sample, temperature, top_p,
    repetition_penalty), or {} where it has none (a base model, or a folder saved before it was written)."""
    import json
    from pathlib import Path

    path = Path(folder).expanduser() / "generation_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {key: config[key] for key in CHAT_DEFAULTS if key in config} if config.get("do_sample") else {}


def load_for_generation(source, precision: str = "auto"):
    """(model in eval mode on the best device, tokenizer) from a models.ModelSource. The weights are bf16
    where the device computes in bf16 natively (devices.py), else fp32: decoding reads every weight for
    each new token, so half the bytes is up to twice the speed."""
    import torch

    from sft.devices import pick_device
    from sft.models import load_model, load_tokenizer

    device = pick_device(precision)
    tokenizer = load_tokenizer(source)
    if precision == "auto":  # fp16 only when asked for: its range is narrow for some models' activations
        dtype = torch.bfloat16 if device.precision == "bf16" else torch.float32
    else:
        dtype = device.compute_dtype
    model = load_model(source, dtype=dtype).to(device.kind)
    return model.eval(), tokenizer


def encode_prompts(tokenizer, conversations: list[list[dict]]):
    """Left-padded batch of chat prompts; message text can never become a special token."""
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    return tokenizer.apply_chat_template(conversations, add_generation_prompt=True, sanitize_control_tokens=True,
                                         padding=True, return_tensors="pt", return_dict=True)


def too_long(what: str, length: int, context_window: int, max_new_tokens: int,
             knob: str = "--max-new-tokens") -> UserError:
    budget = context_window - max_new_tokens
    return UserError(f"{what} is {length} tokens long; with {max_new_tokens} kept for the answer, the model's "
                     f"{context_window}-token context allows {max(budget, 0)}. Shorten it, or pass a smaller "
                     f"{knob}.")


def as_chat(prompt: str | list[dict]) -> list[dict]:
    """A prompt is a message, or a chat's messages up to the answer: as messages, either way."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def prompt_lengths(tokenizer, conversations: list[list[dict]]) -> list[int]:
    """The token count of each conversation's prompt (unpadded: one long message costs only its own length)."""
    ids = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, sanitize_control_tokens=True,
                                        return_dict=False)
    return [len(row) for row in ids]


def check_prompt_lengths(tokenizer, prompts: list, context_window: int, max_new_tokens: int) -> None:
    """Refuse, before generating anything, a prompt (a message, or a conversation up to the answer) that
    leaves no room for its answer."""
    lengths = prompt_lengths(tokenizer, [as_chat(prompt) for prompt in prompts])
    for number, length in enumerate(lengths, start=1):
        if length + max_new_tokens > context_window:
            raise too_long(f"prompt {number}", length, context_window, max_new_tokens)


def history_starts(history: list[dict]) -> list[int]:
    """Where a trimmed history may begin, longest first: drop the oldest exchange (a user message and the
    answer after it) or the oldest single message, until only the newest message is left."""
    starts, start = [0], 0
    while start < len(history) - 1:
        whole_exchange = history[start]["role"] == "user" and len(history) - start > 2
        start += 2 if whole_exchange else 1
        starts.append(start)
    return starts


def fit_history(tokenizer, history: list[dict], context_window: int, max_new_tokens: int,
                knob: str = "--max-new-tokens") -> list[dict]:
    """The newest part of `history` whose prompt leaves max_new_tokens of room in the context window.

    Each message is tokenized once, as a prompt of its own; a longer prompt's length is then their sum less
    what every single-message prompt repeats (the generation prompt, a BOS), so trimming is linear in the
    history. The kept part is measured once more, whole, in case a tokenizer merges across messages."""
    budget = context_window - max_new_tokens
    alone = prompt_lengths(tokenizer, [[message] for message in history])
    repeated = sum(alone[-2:]) - prompt_lengths(tokenizer, [history[-2:]])[0] if len(history) > 1 else 0
    after = [0] * (len(history) + 1)  # after[i]: the summed lengths of history[i:]
    for i in reversed(range(len(history))):
        after[i] = after[i + 1] + alone[i]
    length = alone[-1]
    for start in history_starts(history):
        estimate = after[start] - repeated * (len(history) - start - 1)
        if estimate <= budget and (length := prompt_lengths(tokenizer, [history[start:]])[0]) <= budget:
            return history[start:]
    raise too_long("this message", length, context_window, max_new_tokens, knob)


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


class StopWhen(StoppingCriteria):
    """A stopping criterion for generate(): stop once `should_stop()` says so (checked at every token)."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.should_stop()


def stream_answer(model, tokenizer, history: list[dict], decoding: Decoding, context_window: int,
                  record: dict | None = None, stop: Callable[[], bool] | None = None):
    """Yield the answer's text as it is generated. Closing the generator (e.g. on Ctrl-C), or `stop()`
    returning True, stops generation within a token. Once it has ended, `record` holds the prompt's length
    and the answer's token ids. An error inside generate() is raised here, to the reader of the stream."""
    import torch
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    inputs = encode_prompts(tokenizer, [fit_history(tokenizer, history, context_window, decoding.max_new_tokens)])
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    closed, failed = threading.Event(), []
    criteria = StoppingCriteriaList([StopWhen(lambda: closed.is_set() or (stop is not None and stop()))])

    def work():
        try:
            torch.manual_seed(decoding.seed)
            with torch.no_grad():
                output = model.generate(**inputs, **decoding.generate_kwargs(tokenizer), streamer=streamer,
                                        stopping_criteria=criteria)
        except Exception as error:  # the reader would otherwise wait for more text forever
            failed.append(error)
            streamer.end()
            return
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
        closed.set()
        thread.join()
    if failed:
        raise failed[0]


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
