"""Chat with a model: a multi-turn REPL that streams answers token by token.

The history is rendered through the model's chat template. When it no longer fits the context
window (minus the room kept for the answer), the oldest turns are dropped, never the new message.
"""

import threading

from .compare import Decoding, encode_prompts, too_long
from .errors import UserError

HELP = """Commands:
  /reset   forget the conversation so far
  /help    show this help
  /quit    leave (also /exit, Ctrl-D, or Ctrl-C at an empty prompt)
Ctrl-C while an answer is streaming stops that answer."""


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


def stream_answer(model, tokenizer, history: list[dict], decoding: Decoding, context_window: int):
    """Yield the answer's text as it is generated. Closing the generator (e.g. on Ctrl-C) stops generation."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    inputs = encode_prompts(tokenizer, [fit_history(tokenizer, history, context_window, decoding.max_new_tokens)])
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = threading.Event()

    class StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return stop.is_set()

    def work():
        torch.manual_seed(decoding.seed)
        with torch.no_grad():
            model.generate(**inputs, **decoding.generate_kwargs(tokenizer), streamer=streamer,
                           stopping_criteria=StoppingCriteriaList([StopWhenAsked()]))

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


def repl(model, tokenizer, decoding: Decoding, context_window: int, name: str) -> None:
    import sys

    def write(text):
        sys.stdout.write(text)
        sys.stdout.flush()

    print(f"Chatting with {name}. /help lists commands.")
    history: list[dict] = []
    while True:
        try:
            message = input("\nUser: ")
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()
            return
        command = message.strip().lower()
        if command in ("/quit", "/exit"):
            return
        if command == "/help":
            print(HELP)
            continue
        if command == "/reset":
            history = []
            print("(conversation cleared)")
            continue
        if not message.strip():
            continue
        history.append({"role": "user", "content": message})
        write("Assistant:")
        try:
            answer = answer_once(model, tokenizer, history, decoding, context_window, write)
        except KeyboardInterrupt:
            print("\n(answer stopped)")
            history.pop()
            continue
        except UserError as error:
            print(f"\n{error}")
            history.pop()
            continue
        print()
        history.append({"role": "assistant", "content": answer})
