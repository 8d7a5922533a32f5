"""Latency of the browser chat's endpoint, over loopback: time to the first token, and tokens per second.

    python bench/chat_latency.py --model ./chatbot-test         # after quick_test.py (offline kit on a CPU)

Starts `test_chatbot.py --mode web` on a free port, sends each prompt once as a streamed request to each
model (greedy, up to --max-tokens), and prints per model: the median time from sending the request to
the first piece of text, and the median rate of generated tokens after it (completion tokens / time
from the first piece to the last).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["What is the capital of France?", "Can you explain what machine learning is?",
           "Write a Python function to calculate fibonacci numbers.", "What are some tips for staying healthy?",
           "How many legs does a spider have?"]


def measure(address: str, model: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first text, tokens per second after it, completion tokens) of one streamed answer."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True}
    sent, first, last, usage = time.perf_counter(), None, None, None
    with httpx.stream("POST", address + "/v1/chat/completions", json=body, timeout=600) as response:
        for event in response.iter_lines():
            if not event.startswith("data: {"):
                continue
            chunk = json.loads(event.removeprefix("data: "))
            if chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                last = time.perf_counter()
            usage = chunk.get("usage") or usage
    tokens = usage["completion_tokens"]
    rate = (tokens - 1) / (last - first) if first and last > first else float("nan")
    return (first or last or sent) - sent, rate, tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="./chatbot-test")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, str(ROOT / "test_chatbot.py"), "--mode", "web", "--port", "0",
                               "--model", args.model], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    address = next(line.split()[4] for line in server.stdout if line.startswith("Chat in your browser: "))
    try:
        models = [m["id"] for m in httpx.get(address + "/v1/models").json()["data"]]
        measure(address, models[0], "Hello", 4)  # warm-up: the first request pays one-off costs
        print(f"{args.model}, over loopback, greedy, up to {args.max_tokens} new tokens, {len(PROMPTS)} prompts each:")
        print("| model | time to first token (median) | tokens/s after it (median) | tokens (mean) |\n|---|---|---|---|")
        for model in models:
            runs = [measure(address, model, prompt, args.max_tokens) for prompt in PROMPTS]
            print(f"| {model} | {statistics.median(r[0] for r in runs):.2f} s | "
                  f"{statistics.median(r[1] for r in runs):.1f} | {statistics.mean(r[2] for r in runs):.0f} |")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
