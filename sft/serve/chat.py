"""Chat with a model: a multi-turn REPL that streams answers token by token.

The history is rendered through the model's chat template. When it no longer fits the context
window (minus the room kept for the answer), the oldest turns are dropped, never the new message.
"""

import sys

from sft.errors import UserError
from sft.generation import Decoding, answer_once

HELP = """Commands:
  /reset   forget the conversation so far
  /help    show this help
  /quit    leave (also /exit, Ctrl-D, or Ctrl-C at an empty prompt)
Ctrl-C while an answer is streaming stops that answer."""


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def repl(model, tokenizer, decoding: Decoding, context_window: int, name: str, read=input) -> None:
    """Read a message, stream the answer, keep both in the history; until /quit, Ctrl-D or Ctrl-C."""
    print(f"Chatting with {name}. /help lists commands.")
    history: list[dict] = []
    while True:
        try:
            message = read("\nUser: ")
        except (EOFError, KeyboardInterrupt):
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
