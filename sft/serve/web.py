"""Chat in the browser: one page, and an OpenAI-compatible endpoint that it (or any OpenAI client) uses.

    GET  /                      the page (web_page.html beside this file: no CDN, no external fonts or scripts)
    GET  /v1/models             the models served: "fine-tuned" and "base" (or "base" alone)
    POST /v1/chat/completions   messages -> answer, streamed as server-sent events in OpenAI's chunk format
    GET  /api/info              what the page shows: the models, the context window, the queues and counts

Every prompt is rendered by the fine-tuned model's chat template, for both models, and generation stops
at its end-of-text token: the same format as in training, whichever client asks. Built on Python's own
http.server (a thread per connection, capped) and transformers' TextIteratorStreamer, because what
`transformers serve` does not do is the point here: both models under one template side by side,
compare's labels on every answer, strict validation and a bound on waiting requests.

Any web page the user visits can send requests to 127.0.0.1, so every request is checked before it
costs anything, and every request gets an answer (OpenAI's error shape) whatever it sends:
    Host        on loopback, must name this machine (127.0.0.1, localhost, [::1]): 403, against DNS rebinding
    Origin      if sent, must be this server's own: 403 (another site's page cannot use it)
    API key     --api-key KEY: "Authorization: Bearer KEY" on every /v1 and /api request (401 without);
                required to serve on anything but loopback
    body        Content-Length required (411), at most MAX_BODY_BYTES (413), Content-Type application/json
                (415: a cross-site "simple" text/plain request never reaches the model)
    fields      at most MAX_MESSAGES messages, typed and ranged settings (400); a 500 if generation fails
    clients     REQUEST_DEADLINE seconds to send the whole request, SOCKET_TIMEOUT of silence at most (408);
                MAX_CONNECTIONS at once (503 beyond); one that leaves stops its answer within a token, or
                leaves the queue before its turn
"""

import base64
import copy
import hashlib
import hmac
import ipaddress
import json
import re
import select
import socket
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from sft.errors import UserError, first_line
from sft.eval import compare
from sft.generation import Decoding, fit_history, stream_answer

PAGE = Path(__file__).with_name("web_page.html")
ROLES = ("system", "user", "assistant")
MAX_QUEUED = 4  # requests waiting for one model beyond the one it is answering; more get 503
MAX_BODY_BYTES = 1_000_000  # a request body larger than this gets 413
MAX_MESSAGES = 1_000  # messages in one request; more get 400 (the oldest are trimmed to the context anyway)
MAX_CONNECTIONS = 32  # connections served at once (one thread each); more get 503 at once
SOCKET_TIMEOUT = 30  # seconds a client may stay silent while sending its request, or take to read the next piece
REQUEST_DEADLINE = 60  # seconds a client has to send its whole request, however it trickles in; then 408

ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               500: "server_error", 503: "server_error"}  # OpenAI's names; any other 4xx: invalid_request_error
SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store"}
API_POLICY = "default-src 'none'; frame-ancestors 'none'"  # the CSP of everything but the page


class ApiError(Exception):
    """A request refused: its HTTP status and a message that says what to change."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.headers = HTTPStatus(status), param, headers or {}

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.status.value}}


class ClientGone(Exception):
    """The client closed its connection: nothing more to send it."""


# ----------------------------------------------------------------------------- who may ask


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name in a Host header: "localhost:8000" -> "localhost", "[::1]:8000" -> "::1"."""
    try:
        return urlsplit("//" + host_header).hostname or ""
    except ValueError:
        return ""


def check_caller(headers, path: str, loopback: bool, api_key: str | None) -> None:
    """Refuse a request from another site's page (Origin), through another name (Host), or without the key."""
    host = headers.get("Host", "")
    if loopback and host and not is_loopback(host_name(host)):  # a browser always sends Host
        raise ApiError(403, f"this server answers requests addressed to 127.0.0.1 or localhost, not to {host!r} "
                            "(a page on another site must not reach it through its own name)")
    origin = headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
        raise ApiError(403, f"a page from {origin} may not use this server: only its own page may")
    if api_key and path != "/":
        sent = headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "this server needs its API key: send the header 'Authorization: Bearer KEY' with "
                                "the key it was started with (--api-key)", headers={"WWW-Authenticate": "Bearer"})


def check_exposure(host: str, api_key: str | None) -> None:
    """Serving beyond this machine needs a key: any machine that can reach the port could use the model."""
    if not is_loopback(host) and not api_key:
        raise UserError(f"serving on {host} lets anyone who can reach this machine use the model: pass "
                        "--api-key KEY as well (clients then send 'Authorization: Bearer KEY'), or serve on "
                        "127.0.0.1")


def page_address(host: str, port: int) -> str:
    """The address to open in a browser on this machine."""
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def page_policy(page: bytes) -> str:
    """A Content-Security-Policy that allows the page's own inline script and style, by hash, and nothing
    from anywhere else; the page may only talk to this server, and no other page may frame it."""
    def hashes(tag: bytes) -> str:
        bodies = re.findall(rb"<" + tag + rb">(.*?)</" + tag + rb">", page, re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'" for body in bodies)

    return (f"default-src 'none'; script-src {hashes(b'script')}; style-src {hashes(b'style')}; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# ----------------------------------------------------------------------------- the request


@dataclass
class Request:
    served: "Served"
    name: str
    messages: list[dict]  # as sent, trimmed to the context window
    dropped: int  # oldest messages left out to fit
    decoding: Decoding
    stream: bool


def read_body(headers, rfile, timeout: float) -> bytes:
    """The request body, bounded: its length announced and checked, and JSON only."""
    length = headers.get("Content-Length")
    if length is None:
        raise ApiError(411, "send a Content-Length header with the body's size in bytes")
    if not (length.isascii() and length.isdigit()):
        raise ApiError(400, f"Content-Length must be a number of bytes, not {length!r}")
    if int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is {int(length):,} bytes; this server takes at most {MAX_BODY_BYTES:,}")
    kind = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, f"send the body as Content-Type: application/json, not {kind or 'nothing'!r}")
    try:
        body = rfile.read(int(length))
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {timeout:g} s") from None
    if len(body) < int(length):
        raise ApiError(400, f"the body ended after {len(body)} of the {length} bytes its Content-Length announced")
    return body


def parse(body: bytes, models: dict, tokenizer, window: int) -> Request:
    """A chat completion request, checked: every refusal names the field and the fix."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON (or is nested too deeply)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object with 'messages'")
    name = data.get("model") or ("fine-tuned" if "fine-tuned" in models else "base")
    if not isinstance(name, str):
        raise ApiError(400, f"'model' must be a model's name ({', '.join(models)}), not {name!r}", "model")
    if name not in models:
        raise ApiError(404, f"unknown model {name!r}: this server has {', '.join(models)}", "model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"{len(messages)} messages: this server takes at most {MAX_MESSAGES} in one request "
                            "(only the newest that fit the context window are used anyway)", "messages")
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ApiError(400, f"messages[{number}] must be an object with a text 'content'", "messages")
        if message.get("role") not in ROLES:
            raise ApiError(400, f"messages[{number}] has the unknown role {message.get('role')!r}: use system, user "
                                "or assistant", "messages")
    stream = False if data.get("stream") is None else data["stream"]
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be true or false, not {stream!r}", "stream")
    decoding = decoding_of(data, window)
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        kept = fit_history(tokenizer, clean, window, decoding.max_new_tokens, knob="'max_tokens'")
    except UserError as error:  # the newest message alone does not fit
        raise ApiError(400, str(error), "messages") from None
    return Request(models[name], name, kept, len(clean) - len(kept), decoding, stream)


def decoding_of(data: dict, window: int) -> Decoding:
    """OpenAI's settings, and repetition_penalty as vLLM takes it. An API client that sends no temperature gets
    greedy decoding (0); the page sends the model's chat defaults. Integers are numbers too."""
    checks = {"max_tokens": (int, 1, window - 1), "temperature": (float, 0, 2), "top_p": (float, 0, 1),
              "seed": (int, 0, 2**32 - 1), "repetition_penalty": (float, 1, 2)}
    values = {"max_tokens": 150, "temperature": 0.0, "top_p": 1.0, "seed": 42, "repetition_penalty": 1.0}
    if data.get("max_completion_tokens") is not None:  # OpenAI's newer name for max_tokens
        data = {**data, "max_tokens": data["max_completion_tokens"]}
    for key, (kind, low, high) in checks.items():
        value = data.get(key)
        if value is None:
            continue
        number = not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float))
        if not number or not low <= value <= high or (key == "top_p" and value == 0):
            raise ApiError(400, f"'{key}' must be a{'n integer' if kind is int else ' number'} in "
                                f"{'(' if key == 'top_p' else '['}{low}, {high}], not {value!r}", key)
        values[key] = kind(value)
    return Decoding(max_new_tokens=values["max_tokens"], sample=values["temperature"] > 0,
                    temperature=values["temperature"] or 1.0, top_p=values["top_p"], seed=values["seed"],
                    repetition_penalty=values["repetition_penalty"])


def labels(text: str, token_ids: list[int], eos_token_id: int, max_new_tokens: int) -> dict:
    """Compare's labels for one answer (compare.py)."""
    return {"stopped_cleanly": compare.is_clean_stop(token_ids, eos_token_id, max_new_tokens),
            "role_leak": compare.has_role_leak(text), "repetition": compare.has_repetition(text),
            "tokens": len(token_ids)}


def linger(connection: socket.socket, seconds: float = 0.5) -> None:
    """Say we are done writing, then read (and drop) what the client still sends, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    try:
        connection.shutdown(socket.SHUT_WR)
        connection.settimeout(0.1)
        while time.monotonic() < deadline and connection.recv(65536):
            pass
    except OSError:
        pass


def client_gone(connection: socket.socket) -> bool:
    """Whether the client has closed its side: readable, with nothing to read (it sent its whole request)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


# ----------------------------------------------------------------------------- one model, one answer at a time


@dataclass
class Served:
    """One model behind the endpoint: one generation at a time, the others wait their turn in order, in a
    bounded queue. Each has its own copy of the tokenizer: a fast tokenizer must not be used by two threads
    at once."""
    model: object
    tokenizer: object
    answering: bool = False
    queue: deque = field(default_factory=deque)  # one event per waiting request, oldest first
    guard: threading.Lock = field(default_factory=threading.Lock)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def wait_turn(self, max_queued: int, gone) -> bool:
        """Take the model (True), after the requests that came before; False if the client left while
        waiting. With max_queued requests waiting already: 503."""
        with self.guard:
            if not self.answering:
                self.answering = True
                return True
            if len(self.queue) >= max_queued:
                raise ApiError(503, "this model is busy with other requests: retry in a few seconds",
                               headers={"Retry-After": "5"})
            turn = threading.Event()
            self.queue.append(turn)
        while not turn.wait(0.2):
            if gone():
                with self.guard:
                    if turn in self.queue:
                        self.queue.remove(turn)
                        return False
                break  # its turn came at the same moment: take it, and pass it on
        if gone():
            self.done()
            return False
        return True

    def done(self) -> None:
        """Hand the model to the oldest waiting request, or leave it free."""
        with self.guard:
            if self.queue:
                self.queue.popleft().set()
            else:
                self.answering = False


# ----------------------------------------------------------------------------- the handler


class Handler(BaseHTTPRequestHandler):
    """One connection, one request (HTTP/1.0): the page, the model list, or a chat completion."""
    server_version, sys_version = "sft-chat", ""

    def setup(self):
        self.timeout = self.server.socket_timeout  # applied to the socket by StreamRequestHandler.setup
        self.replying = False  # True once a status line is sent: an error after it can only end the stream
        self.refused = False  # refused, perhaps before its body was read: see finish()
        self.server.expect_request(self.request)
        super().setup()

    def finish(self):
        super().finish()
        if self.refused:  # read what is left of the request before closing, or the close resets the connection
            linger(self.connection)  # and the client may lose the refusal it has not read yet

    def do_GET(self):
        self.server.request_read(self.connection)
        self.respond(self.get)

    def do_POST(self):
        self.respond(self.post)

    def respond(self, route) -> None:
        """Run one route; whatever happens, the client gets an answer (or its connection is closed)."""
        try:
            check_caller(self.headers, urlsplit(self.path).path, self.server.loopback, self.server.api_key)
            route(urlsplit(self.path).path)
        except ApiError as error:
            self.send_api_error(error)
        except (ClientGone, ConnectionError, TimeoutError):
            self.server.count("client left")
        except Exception as error:  # a bug or a failure in generation: say so, and keep serving
            self.note(500, f"{type(error).__name__}: {first_line(error)}")
            self.server.count("failed")
            if not self.replying:
                self.send_api_error(ApiError(500, f"the server failed on this request ({type(error).__name__}: "
                                                  f"{first_line(error)})"), noted=True)

    def get(self, path: str):
        if path == "/":
            self.reply(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8",
                       {"Content-Security-Policy": self.server.page_policy})
        elif path == "/v1/models":
            created = int(self.server.started)
            self.send_json(HTTPStatus.OK, {"object": "list", "data": [
                {"id": name, "object": "model", "created": created, "owned_by": "sft-tutorial"}
                for name in self.server.models]})
        elif path == "/api/info":
            queues = {name: {"answering": served.answering, "waiting": served.waiting}
                      for name, served in self.server.models.items()}
            self.send_json(HTTPStatus.OK, {**self.server.info, "queues": queues, "counts": dict(self.server.counts)})
        else:
            raise ApiError(404, f"no such page: {path}")

    def post(self, path: str):
        if path != "/v1/chat/completions":
            raise ApiError(404, f"no such endpoint: {path}")
        body = read_body(self.headers, self.rfile, self.server.socket_timeout)
        self.server.request_read(self.connection)
        with self.server.tokenizer_lock:
            request = parse(body, self.server.models, self.server.tokenizer, self.server.window)
        if not request.served.wait_turn(self.server.max_queued, self.gone):
            self.server.count("left while waiting")
            return
        try:
            (self.stream if request.stream else self.complete)(request)
        finally:
            request.served.done()
        self.server.count("answered")

    def gone(self) -> bool:
        return client_gone(self.connection)

    def answer(self, request: Request):
        """Yield text pieces as they are generated; afterwards `record` holds the token ids. Generation stops
        within a token once the client has gone, or on Ctrl-C (server.stopping)."""
        record = {}
        pieces = stream_answer(request.served.model, request.served.tokenizer, request.messages, request.decoding,
                               self.server.window, record=record,
                               stop=lambda: self.server.stopping.is_set() or self.gone())
        return pieces, record

    def complete(self, request: Request):
        pieces, record = self.answer(request)
        text = "".join(pieces).strip()
        if self.gone():
            self.left(request, record)
            raise ClientGone
        self.send_json(HTTPStatus.OK, {**self.head(request, "chat.completion"), "choices": [{
            "index": 0, "message": {"role": "assistant", "content": text},
            "finish_reason": self.finish_reason(record)}], "usage": self.usage(record),
            **self.extras(request, text, record)})

    def stream(self, request: Request):
        self.start_reply(HTTPStatus.OK, "text/event-stream")
        self.end_headers()
        pieces, record = self.answer(request)
        head, text = self.head(request, "chat.completion.chunk"), []
        try:
            self.event({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
            for piece in filter(None, pieces):  # the streamer hands over whole words (and empty strings between)
                text.append(piece)
                self.event({**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            if self.gone():
                raise ClientGone
            self.event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_reason(record)}],
                        "usage": self.usage(record), **self.extras(request, "".join(text).strip(), record)})
            self.wfile.write(b"data: [DONE]\n\n")
        except (ClientGone, ConnectionError, TimeoutError):
            pieces.close()  # generation has ended: record holds what it made
            self.left(request, record)
            raise ClientGone from None
        except Exception as error:  # generation failed mid-answer: the status is sent, so say it in the stream
            self.note(500, f"{type(error).__name__}: {first_line(error)}")
            self.server.count("failed")
            self.event(ApiError(500, f"generation failed ({type(error).__name__}: {first_line(error)})").body())
        finally:
            pieces.close()

    def left(self, request: Request, record: dict) -> None:
        self.server.log(f"{self.client_address[0]} {self.command} {self.path}: the client left; its answer stopped "
                        f"after {len(record.get('ids', []))} of {request.decoding.max_new_tokens} tokens")

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

    # --- writing replies

    def start_reply(self, status: HTTPStatus, content_type: str, headers: dict | None = None) -> None:
        self.replying = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in {**SAFE_HEADERS, "Content-Security-Policy": API_POLICY, **(headers or {})}.items():
            self.send_header(key, value)

    def reply(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.start_reply(status, content_type, headers)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: HTTPStatus, payload: dict, headers: dict | None = None) -> None:
        self.reply(status, json.dumps(payload).encode(), "application/json", headers)

    def send_api_error(self, error: ApiError, noted: bool = False) -> None:
        if not noted:
            self.note(error.status, str(error))
        self.server.count("failed" if error.status == 500 else f"refused {error.status.value}")
        self.refused = self.close_connection = True
        try:
            self.send_json(error.status, error.body(), error.headers)
        except (ConnectionError, TimeoutError):
            pass  # the client has gone already

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line, an unsupported method) in the same JSON shape."""
        if self.request_version == "HTTP/0.9":  # a line too garbled to say its version: answer with a status line
            self.request_version = "HTTP/1.0"
        self.send_api_error(ApiError(code, message or HTTPStatus(code).phrase))

    # --- the log: one line per refusal or failure, none for a request answered

    def note(self, status, message: str) -> None:
        what = f"{self.command} {self.path}" if getattr(self, "command", None) else "request"
        self.server.log(f"{self.client_address[0]} {what} -> {int(status)}: {message}")

    def log_request(self, code="-", size="-"):
        pass

    def log_message(self, format, *args):  # http.server's own notes (e.g. a request that timed out)
        self.server.log(f"{self.client_address[0]} {format % args}")


# ----------------------------------------------------------------------------- the server


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # connections the OS holds until they are accepted

    def __init__(self, address, models: dict, tokenizer, window: int, info: dict, max_queued: int = MAX_QUEUED,
                 api_key: str | None = None, max_connections: int = MAX_CONNECTIONS,
                 socket_timeout: float = SOCKET_TIMEOUT, request_deadline: float = REQUEST_DEADLINE, log=None):
        host = address[0]
        check_exposure(host, api_key)
        self.loopback, self.api_key = is_loopback(host), api_key
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.closing = threading.Event()  # before binding: a failed bind calls server_close, which sets it
        try:
            super().__init__(address, Handler)
        except OSError as error:  # port taken, an address this machine does not have, no IPv6
            raise UserError(f"cannot serve on {host} port {address[1]}: {error.strerror or error}. Pick another "
                            "--port, or --host 127.0.0.1") from None
        self.models = {name: Served(model, copy.deepcopy(tokenizer)) for name, model in models.items()}
        self.tokenizer, self.tokenizer_lock = tokenizer, threading.Lock()
        self.window, self.max_queued, self.started = window, max_queued, time.time()
        self.info = {**info, "models": list(models), "context_window": window, "api_key_required": bool(api_key)}
        self.page = PAGE.read_bytes()
        self.page_policy = page_policy(self.page)
        self.socket_timeout, self.max_connections = socket_timeout, max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        self.stopping = threading.Event()  # set by Ctrl-C: every answer being generated ends at its next token
        self.counts, self.counts_lock = Counter(), threading.Lock()
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))  # one line per refusal or failure
        self.request_deadline, self.unread, self.unread_lock = request_deadline, {}, threading.Lock()
        threading.Thread(target=self.enforce_deadlines, daemon=True).start()

    # --- the whole request within request_deadline: one watchdog for every connection

    def expect_request(self, connection) -> None:
        with self.unread_lock:
            self.unread[connection] = time.monotonic() + self.request_deadline

    def request_read(self, connection) -> None:
        with self.unread_lock:
            self.unread.pop(connection, None)

    def enforce_deadlines(self) -> None:
        """Every half second: a connection still sending its request after the deadline gets 408 and is shut,
        which also wakes its thread from the read it is blocked in."""
        body = json.dumps(ApiError(408, f"the whole request must arrive within {self.request_deadline:g} s").body())
        reply = (f"HTTP/1.0 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                 f"\r\nConnection: close\r\n\r\n{body}").encode()
        while not self.closing.wait(0.5):
            now = time.monotonic()
            with self.unread_lock:
                late = [connection for connection, deadline in self.unread.items() if deadline < now]
                for connection in late:
                    del self.unread[connection]
            for connection in late:
                self.count("refused 408")
                try:
                    connection.sendall(reply)
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def server_close(self):
        self.closing.set()
        super().server_close()

    def count(self, what: str) -> None:
        with self.counts_lock:
            self.counts[what] += 1

    def process_request(self, request, client_address):
        """A thread for the connection, if one of max_connections is free; otherwise a 503 at once."""
        if not self.slots.acquire(blocking=False):
            return self.refuse(request)
        # No thread started (none left): the slot is free again. Not on Ctrl-C (BaseException), which can land in
        # Thread.start() after the thread has run and freed its slot: a second release would raise ValueError in
        # place of KeyboardInterrupt, and the server would go on serving.
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.request_read(request)
            self.slots.release()

    def refuse(self, connection) -> None:
        """503 without reading the request (it may never come): written, then the connection drained and closed."""
        self.count("refused 503")
        body = json.dumps(ApiError(503, f"this server is handling {self.max_connections} connections: retry in a few "
                                        "seconds").body()).encode()
        head = ("HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            connection.settimeout(0.2)
            connection.sendall(head + body)
        except OSError:
            pass
        linger(connection)
        connection.close()

    def handle_error(self, request, client_address):
        """An error outside a handler's own checks: one line, not a traceback."""
        error = sys.exc_info()[1]
        self.log(f"{client_address[0]} connection error: {type(error).__name__}: {first_line(error)}")

    def stop_generations(self, wait: float = 120.0) -> None:
        """On Ctrl-C: every answer being generated stops at its next token, before the process exits."""
        self.stopping.set()
        deadline = time.time() + wait
        while any(served.answering for served in self.models.values()) and time.time() < deadline:
            time.sleep(0.05)
