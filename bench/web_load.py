"""Load check of the browser chat's server: honest, hostile and vanishing clients at once, for a fixed time.

    python bench/web_load.py --model ./chatbot-test                 # after quick_test.py (offline kit)
    python bench/web_load.py --model ./chatbot-test --clients 24 --seconds 120

Starts `test_chatbot.py --mode web` on a free port, then runs --clients threads until --seconds have
passed, each repeating one kind of request (the kinds take turns over the threads):

    chat     a normal request, the whole answer at once (up to --max-tokens)
    stream   a normal streamed request, read to the end
    leave    a streamed request whose client closes the connection after the first piece
    garbage  one of: a bad or missing Content-Length, a body shorter than announced, text/plain from
             another site's page, a wrong Host, deeply nested JSON, a request line that is not HTTP
    slow     a client that opens a connection and sends a few bytes a second, never a whole request

It prints, per kind: requests made, replies by HTTP status, p50/p95 latency to the whole reply,
hangs (no reply within --hang seconds) and connections closed with no reply at all; then whether the
server still answers a normal request afterwards with both models free.
"""

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["chat", "stream", "leave", "garbage", "chat", "stream", "garbage", "slow"]
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


def json_post(body: dict, content_type: str = "application/json", extra: str = "", host: str = "127.0.0.1") -> bytes:
    data = json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n{extra}\r\n").encode() + data


GARBAGE = [
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: abc\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 99999999999\r\n\r\n{}",
    json_post({"messages": HELLO, "temperature": 2}, "text/plain", "Origin: http://evil.example\r\n"),
    json_post({"messages": HELLO, "temperature": 2}, "text/plain"),
    json_post({"messages": HELLO}, host="evil.example:8000"),
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 200000\r\n\r\n" + b"[" * 100_000 + b"]" * 100_000,
    json_post({"messages": HELLO, "stream": "false", "model": [1]}),
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 500\r\n\r\n{}",
    b"\x16\x03\x01 not http at all\r\n\r\n",
]


def exchange(port: int, data: bytes, hang: float, leave_after_first: bool = False) -> tuple[str, float]:
    """Send `data`; return (the reply's status, or 'hang' / 'no reply' / 'left', seconds to the whole reply)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=hang) as connection:
        try:
            connection.sendall(data)
            received = b""
            while chunk := connection.recv(65536):
                received += chunk
                if leave_after_first and b"data: {" in received:
                    return "left", time.perf_counter() - started
        except TimeoutError:
            return "hang", time.perf_counter() - started
        except ConnectionError:
            pass
    seconds = time.perf_counter() - started
    return (received.split(b" ", 2)[1].decode() if received.startswith(b"HTTP/") else "no reply"), seconds


def slow_client(port: int, until: float) -> tuple[str, float]:
    """A few bytes a second until the server closes the connection (or the run ends)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as connection:
        line = b"POST /v1/chat/completions HTTP/1.1\r\nX-Slow: " + b"a" * 10_000
        for byte in line:
            if time.time() > until:
                return "still open at the end", time.perf_counter() - started
            try:
                connection.sendall(bytes([byte]))
                time.sleep(0.5)
            except OSError:
                break
        try:
            reply = connection.recv(65536)
        except OSError:
            reply = b""
    status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/") else "closed by the server"
    return status, time.perf_counter() - started


def client(kind: str, number: int, port: int, until: float, args, results: dict) -> None:
    stream = kind in ("stream", "leave")
    body = {"messages": HELLO, "max_tokens": args.max_tokens, "stream": stream,
            "model": ("base", "fine-tuned")[number % 2]}
    i = 0
    while time.time() < until:
        if kind == "slow":
            outcome = slow_client(port, until)
        elif kind == "garbage":
            outcome = exchange(port, GARBAGE[(number + i) % len(GARBAGE)], args.hang)
        else:
            outcome = exchange(port, json_post(body), args.hang, leave_after_first=kind == "leave")
        results[kind].append(outcome)
        if outcome[0] == "503":
            time.sleep(1)  # as a client that respects Retry-After would, sooner
        i += 1


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100)[int(share * 100) - 1] if len(values) > 1 else (values or [0])[0]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="./chatbot-test")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--hang", type=float, default=300, help="seconds without a reply that count as a hang")
    args = parser.parse_args()
    log = tempfile.TemporaryFile("w+")  # the server's log: a pipe nobody reads would fill and block it
    server = subprocess.Popen([sys.executable, str(ROOT / "test_chatbot.py"), "--mode", "web", "--port", "0",
                               "--model", args.model], stdout=subprocess.PIPE, stderr=log, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    address = next(line.split()[4] for line in server.stdout if line.startswith("Chat in your browser: "))
    port = int(address.rsplit(":", 1)[1])
    results, until = defaultdict(list), time.time() + args.seconds
    threads = [threading.Thread(target=client, args=(KINDS[n % len(KINDS)], n, port, until, args, results))
               for n in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after, _ = exchange(port, json_post({"messages": HELLO, "max_tokens": 4}), args.hang)
    info = json.loads(exchange_body(port, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    free = not any(q["answering"] or q["waiting"] for q in info["queues"].values())
    server.send_signal(signal.SIGINT)
    server.communicate(timeout=300)
    log.seek(0)
    log = log.read()

    print(f"{args.model} served on loopback; {args.clients} clients for {args.seconds:g} s, up to {args.max_tokens} "
          f"new tokens; {machine()}\n")
    print("| kind | requests | replies by status | p50 | p95 | hangs | no reply |")
    print("|---|---|---|---|---|---|---|")
    for kind in dict.fromkeys(KINDS):
        outcomes = results[kind]
        statuses = Counter(status for status, _ in outcomes)
        seconds = [s for status, s in outcomes if status not in ("hang", "no reply")]
        shown = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items())
                          if status not in ("hang", "no reply"))
        print(f"| {kind} | {len(outcomes)} | {shown} | {percentile(seconds, 0.5):.2f} s | "
              f"{percentile(seconds, 0.95):.2f} s | {statuses['hang']} | {statuses['no reply']} |")
    print(f"\nAfterwards: a normal request got {after}; both models free: {free}; server counts: {info['counts']}")
    print(f"Server exit status after Ctrl-C: {server.returncode}; tracebacks in its log: {log.count('Traceback')}; "
          f"log lines: {len(log.splitlines())}")


def exchange_body(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received.partition(b"\r\n\r\n")[2]


if __name__ == "__main__":
    main()
