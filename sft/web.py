"""Chat in the browser: one page, and an OpenAI-compatible endpoint that it (or any OpenAI client) uses.

    GET  /                      the page (sft/web_page.html: no CDN, no external fonts or scripts)
    GET  /v1/models             the models served: "fine-tuned" and "base" (or "base" alone)
    POST /v1/chat/completions   messages -> answer, streamed as server-sent events in OpenAI's chunk format

Every prompt is rendered by the fine-tuned model's chat template, for both models, and generation stops
at its end-of-text token: the same format as in training, whichever client asks. Built on Python's own
http.server (a thread per request) and transformers' TextIteratorStreamer, because what `transformers
serve` does not do is the point here: both models under one template side by side, compare's labels on
every answer, strict validation and a bound on waiting requests.
"""

import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import compare
from .errors import UserError
from .generation import Decoding, fit_history, stream_answer

PAGE = Path(__file__).with_name("web_page.html")
ROLES = ("system", "user", "assistant")
MAX_QUEUED = 4  # requests waiting for one model beyond the one it is answering; more get 503


class BadRequest(Exception):
    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


@dataclass
class Served:
    """One model behind the endpoint: one generation at a time, the others wait in a bounded queue. Each has
    its own copy of the tokenizer: a fast tokenizer must not be used by two threads at once."""
    model: object
    tokenizer: object
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: int = 0
    guard: threading.Lock = field(default_factory=threading.Lock)

    def turn(self, max_queued: int):
        with self.guard:
            if self.waiting >= max_queued:
                raise BadRequest("this model is busy with other requests: retry in a few seconds",
                                 HTTPStatus.SERVICE_UNAVAILABLE)
            self.waiting += 1
        self.lock.acquire()
        with self.guard:
            self.waiting -= 1
        return self.lock


@dataclass
class Request:
    served: Served
    name: str
    messages: list[dict]  # as sent, trimmed to the context window
    dropped: int  # oldest messages left out to fit
    decoding: Decoding
    stream: bool


def parse(body: bytes, models: dict, tokenizer, window: int) -> Request:
    """A chat completion request, checked: every refusal names the field and the fix."""
    try:
        data = json.loads(body or b"null")
    except ValueError:
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object with 'messages'")
    name = data.get("model") or ("fine-tuned" if "fine-tuned" in models else "base")
    if name not in models:
        raise BadRequest(f"unknown model {name!r}: this server has {', '.join(models)}", HTTPStatus.NOT_FOUND, "model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects", param="messages")
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadRequest(f"messages[{number}] must be an object with a text 'content'", param="messages")
        if message.get("role") not in ROLES:
            raise BadRequest(f"messages[{number}] has the unknown role {message.get('role')!r}: use system, user or "
                             "assistant", param="messages")
    decoding = decoding_of(data, window)
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        kept = fit_history(tokenizer, clean, window, decoding.max_new_tokens)
    except UserError as error:  # the newest message alone does not fit
        raise BadRequest(str(error), param="messages") from None
    return Request(models[name], name, kept, len(clean) - len(kept), decoding, bool(data.get("stream")))


def decoding_of(data: dict, window: int) -> Decoding:
    """OpenAI's settings: temperature 0 (the default here) is greedy decoding."""
    checks = {"max_tokens": (int, 1, window - 1), "temperature": ((int, float), 0, 2), "top_p": ((int, float), 0, 1),
              "seed": (int, 0, 2**32 - 1)}
    values = {"max_tokens": 150, "temperature": 0, "top_p": 1.0, "seed": 42}
    for key, (kind, low, high) in checks.items():
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high or (
                key == "top_p" and value == 0):
            raise BadRequest(f"'{key}' must be a number in {'(' if key == 'top_p' else '['}{low}, {high}], not "
                             f"{value!r}", param=key)
        values[key] = value
    return Decoding(max_new_tokens=values["max_tokens"], sample=values["temperature"] > 0,
                    temperature=values["temperature"] or 1.0, top_p=values["top_p"], seed=values["seed"])


def labels(text: str, token_ids: list[int], eos_token_id: int, max_new_tokens: int) -> dict:
    """Compare's labels for one answer (compare.py)."""
    return {"stopped_cleanly": compare.is_clean_stop(token_ids, eos_token_id, max_new_tokens),
            "role_leak": compare.has_role_leak(text), "repetition": compare.has_repetition(text),
            "tokens": len(token_ids)}


class Handler(BaseHTTPRequestHandler):
    """One request: the page, the model list, or a chat completion (server: ChatServer, below)."""

    def do_GET(self):
        if self.path == "/":
            self.reply(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif self.path == "/v1/models":
            created = int(self.server.started)
            self.send_json(HTTPStatus.OK, {"object": "list", "data": [
                {"id": name, "object": "model", "created": created, "owned_by": "sft-tutorial"}
                for name in self.server.models]})
        elif self.path == "/api/info":
            queues = {name: {"answering": served.lock.locked(), "waiting": served.waiting}
                      for name, served in self.server.models.items()}
            self.send_json(HTTPStatus.OK, {**self.server.info, "queues": queues})
        else:
            self.send_error_json(BadRequest(f"no such page: {self.path}", HTTPStatus.NOT_FOUND))

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self.send_error_json(BadRequest(f"no such endpoint: {self.path}", HTTPStatus.NOT_FOUND))
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with self.server.tokenizer_lock:
                request = parse(body, self.server.models, self.server.tokenizer, self.server.window)
            lock = request.served.turn(self.server.max_queued)
        except BadRequest as error:
            return self.send_error_json(error)
        try:
            (self.stream if request.stream else self.complete)(request)
        finally:
            self.server.stops.discard(getattr(self, "stop", None))
            lock.release()

    def answer(self, request):
        """Yield text pieces as they are generated; afterwards `record` holds the token ids."""
        record, self.stop = {}, threading.Event()
        self.server.stops.add(self.stop)  # set by Ctrl-C on the server: the answer ends at its next token
        pieces = stream_answer(request.served.model, request.served.tokenizer, request.messages, request.decoding,
                               self.server.window, record=record, stop=self.stop)
        return pieces, record

    def complete(self, request: Request):
        pieces, record = self.answer(request)
        text = "".join(pieces).strip()
        self.send_json(HTTPStatus.OK, {**self.head(request, "chat.completion"), "choices": [{
            "index": 0, "message": {"role": "assistant", "content": text},
            "finish_reason": self.finish_reason(record)}], "usage": self.usage(record),
            **self.extras(request, text, record)})

    def stream(self, request: Request):
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        pieces, record = self.answer(request)
        head, text = self.head(request, "chat.completion.chunk"), []
        try:
            self.event({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
            for piece in filter(None, pieces):  # the streamer hands over whole words (and empty strings between)
                text.append(piece)
                self.event({**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            pieces.close()  # generation has ended: its token ids are in record
            self.event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_reason(record)}],
                        "usage": self.usage(record), **self.extras(request, "".join(text).strip(), record)})
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):  # the client went away: stop generating for it
            pieces.close()

    def event(self, payload: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()

    def head(self, request, kind: str) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()),
                "model": request.name}

    def finish_reason(self, record) -> str:
        return "stop" if self.server.tokenizer.eos_token_id in record.get("ids", []) else "length"

    def usage(self, record) -> dict:
        prompt, completion = record.get("prompt_tokens", 0), len(record.get("ids", []))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def extras(self, request, text, record) -> dict:
        """Beyond OpenAI's format (clients ignore it): compare's labels, and the turns left out to fit."""
        return {"labels": labels(text, record.get("ids", []), self.server.tokenizer.eos_token_id,
                                 request.decoding.max_new_tokens), "dropped_messages": request.dropped}

    def send_json(self, status: HTTPStatus, payload: dict, headers: dict | None = None) -> None:
        self.reply(status, json.dumps(payload).encode(), "application/json", headers)

    def send_error_json(self, error: BadRequest) -> None:
        kind = "invalid_request_error" if error.status == HTTPStatus.BAD_REQUEST else error.status.phrase.lower()
        retry = {"Retry-After": "5"} if error.status == HTTPStatus.SERVICE_UNAVAILABLE else None
        self.send_json(error.status, {"error": {"message": str(error), "type": kind, "param": error.param,
                                                "code": None}}, retry)

    def reply(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # one quiet line per request, not the default noise on stderr
        pass


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, models: dict, tokenizer, window: int, info: dict, max_queued: int = MAX_QUEUED):
        super().__init__(address, Handler)
        self.models = {name: Served(model, copy.deepcopy(tokenizer)) for name, model in models.items()}
        self.tokenizer, self.tokenizer_lock = tokenizer, threading.Lock()
        self.window, self.max_queued, self.started = window, max_queued, time.time()
        self.info = {**info, "models": list(models), "context_window": window}
        self.stops = set()  # one event per answer being generated

    def stop_generations(self, wait: float = 10.0) -> None:
        """On Ctrl-C: every answer being generated stops at its next token, before the process exits."""
        for stop in list(self.stops):
            stop.set()
        deadline = time.time() + wait
        while any(served.lock.locked() for served in self.models.values()) and time.time() < deadline:
            time.sleep(0.05)
