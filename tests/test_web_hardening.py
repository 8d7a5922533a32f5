"""The browser chat's server under bad requests, hostile pages, slow clients and clients that leave.

A real ChatServer on loopback, in this process (so that its limits can be small and a failure can be
injected), serving a random GPT-2 that takes seconds for a long answer; raw sockets for what no HTTP
library would send."""

import json
import socket
import threading
import time

import httpx
import pytest

HELLO = [{"role": "user", "content": "What is the capital of France?"}]
TIMEOUT = 3  # the test server's socket timeout, seconds
DEADLINE = 10  # and the time a client has to send its whole request (well after the timeout, on a busy machine too)
CONNECTIONS = 6  # and its connection cap
LONG = 1000  # new tokens: an answer that takes seconds, so that a client can leave in the middle


@pytest.fixture(scope="module")
def live(chat_model_dir):
    """(address, the server, its log lines): both models are the random GPT-2, one waiting request each."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft.serve.web import ChatServer

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    models = {name: AutoModelForCausalLM.from_pretrained(chat_model_dir).eval() for name in ("base", "fine-tuned")}
    log = []
    server = ChatServer(("127.0.0.1", 0), models, tokenizer, 1024, {"about": "test", "titles": {}}, max_queued=1,
                        max_connections=CONNECTIONS, socket_timeout=TIMEOUT, request_deadline=DEADLINE,
                        log=log.append)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server, log
    server.shutdown()
    server.server_close()


def one_model_server(chat_model_dir, address=("127.0.0.1", 0), about="", titles=None, **limits):
    """A quiet ChatServer serving the random GPT-2 as "base" (not started: the test runs it as it needs)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft.serve.web import ChatServer

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    model = AutoModelForCausalLM.from_pretrained(chat_model_dir).eval()
    return ChatServer(address, {"base": model}, tokenizer, 1024, {"about": about, "titles": titles or {}},
                      log=lambda line: None, **limits)


def chat(address, headers=None, **body) -> httpx.Response:
    return httpx.post(f"{address}/v1/chat/completions", json={"max_tokens": 4, "messages": HELLO, **body},
                      headers=headers, timeout=120)


def raw(address: str, data: bytes, close_after_send: bool = False) -> bytes:
    """Send bytes as they are; return everything the server sends back until it closes the connection."""
    host, port = address.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def status_and_error(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]["message"]


def post(body: bytes, *headers: str, host: str = "127.0.0.1") -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def healthy(address: str) -> None:
    """The server answers a normal request, and no model is left locked."""
    answer = chat(address)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1, answer.text
    queues = httpx.get(address + "/api/info").json()["queues"]
    assert not any(queue["answering"] or queue["waiting"] for queue in queues.values()), queues


def wait_for(condition, what: str, seconds: float = 120):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.02)


def answering(address: str, model: str = "fine-tuned") -> bool:
    return httpx.get(address + "/api/info").json()["queues"][model]["answering"]


# ----------------------------------------------------------------------------- what locked the server before


def test_the_request_that_locked_the_server_is_answered_and_so_is_the_next(live):
    address, _, _ = live
    # what any page could send blind: a "simple" cross-site request, integer temperature
    hostile = httpx.post(address + "/v1/chat/completions", content=json.dumps(
        {"messages": HELLO, "max_tokens": 5, "temperature": 2}), timeout=60,
        headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert hostile.status_code == 403 and "evil.example may not use this server" in hostile.json()["error"]["message"]
    plain = httpx.post(address + "/v1/chat/completions", content=json.dumps({"messages": HELLO}), timeout=60,
                       headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["error"]["message"]
    for temperature in (2, 1, 1e-300, 1e-6, 0):  # integers are numbers; too small to divide by means greedy
        assert chat(address, temperature=temperature).status_code == 200, temperature
    greedy, tiny = (chat(address, max_tokens=12, temperature=t).json() for t in (0, 1e-300))
    assert greedy["choices"][0]["message"]["content"] == tiny["choices"][0]["message"]["content"]
    healthy(address)


def test_an_error_inside_generation_reaches_the_request_and_frees_the_model(live):
    address, server, log = live
    model = server.models["fine-tuned"].model
    original = model.generate

    def fails(*args, **kwargs):
        raise RuntimeError("out of memory (injected)")

    model.generate = fails
    try:
        whole = chat(address)
        assert whole.status_code == 500 and "RuntimeError: out of memory (injected)" in whole.json()["error"]["message"]
        with httpx.stream("POST", address + "/v1/chat/completions", timeout=60,
                          json={"messages": HELLO, "max_tokens": 4, "stream": True}) as response:
            events = b"".join(response.iter_bytes()).split(b"\n\n")
        error = json.loads(events[-2].removeprefix(b"data: "))["error"]  # OpenAI's way: an error event, no [DONE]
        assert error["type"] == "server_error" and "out of memory (injected)" in error["message"]
    finally:
        model.generate = original
    assert sum("RuntimeError: out of memory (injected)" in line for line in log) == 2  # one line each
    healthy(address)


# ----------------------------------------------------------------------------- bounded, validated input


@pytest.mark.parametrize("request_bytes, status, message", [
    (post(b"{}", "Content-Type: application/json"), 411, "Content-Length"),
    (post(b"{}", "Content-Type: application/json", "Content-Length: abc"), 400, "not 'abc'"),
    (post(b"{}", "Content-Type: application/json", "Content-Length: -1"), 400, "not '-1'"),
    (post(b"{}", "Content-Type: application/json", "Content-Length: 99999999999999"), 413, "at most 1,000,000"),
    (post(b"{}", "Content-Length: 2"), 415, "not 'nothing'"),
    (post(b"{}", "Content-Type: application/x-www-form-urlencoded", "Content-Length: 2"), 415, "application/json"),
    (post(b"[" * 100_000 + b"]" * 100_000, "Content-Type: application/json", "Content-Length: 200000"), 400,
     "nested too deeply"),
    (post(json.dumps({"messages": HELLO * 1001}).encode(), "Content-Type: application/json",
          f"Content-Length: {len(json.dumps({'messages': HELLO * 1001}))}"), 400, "at most 1000"),
    (post(b"{}", "Content-Type: application/json", "Content-Length: 2", host="evil.example:8000"), 403,
     "not to 'evil.example:8000'"),
    (b"GARBAGE\r\n\r\n", 400, "Bad request"),
    (b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501, "Unsupported method"),
], ids=["no length", "length abc", "length -1", "length huge", "no type", "form type", "deep nesting",
        "1001 messages", "wrong host", "garbage", "preflight"])
def test_malformed_requests_get_a_json_error(live, request_bytes, status, message):
    address, _, _ = live
    got, text = status_and_error(raw(address, request_bytes))
    assert got == status and message in text, (got, text)


def test_a_body_shorter_than_announced_gets_an_answer_after_the_timeout(live):
    address, _, _ = live
    started = time.time()
    response = raw(address, post(b'{"messages"', "Content-Type: application/json", "Content-Length: 500"))
    assert status_and_error(response) == (408, f"the body did not arrive within {TIMEOUT} s")
    assert time.time() - started < TIMEOUT + 30  # the timeout, not a hang
    healthy(address)


def test_responses_carry_security_headers_and_the_page_a_policy_that_matches_it(live):
    address, _, _ = live
    page = httpx.get(address + "/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "connect-src 'self'" in policy
    assert policy.count("'sha256-") == 2 and "unsafe-inline" not in policy  # its own script and style, by hash
    api = httpx.get(address + "/v1/models")
    for response in (page, api):
        assert response.headers["x-content-type-options"] == "nosniff" and response.headers["x-frame-options"] == "DENY"
    assert httpx.get(address + "/v1/models", headers={"Host": "localhost:9999"}).status_code == 200  # an ssh tunnel


def test_a_history_of_400_messages_is_trimmed_in_linear_time(live, chat_tokenizer):
    from sft import generation

    history = [{"role": ("user", "assistant")[i % 2], "content": f"message {i} " + "word " * 20} for i in range(399)]
    history += HELLO
    seen = []
    apply = chat_tokenizer.apply_chat_template
    chat_tokenizer.apply_chat_template = lambda conversations, **kw: seen.append(conversations) or apply(
        conversations, **kw)
    kept = generation.fit_history(chat_tokenizer, history, 1024, 100)
    tokenized = sum(len(c) for batch in seen for c in (batch if isinstance(batch[0], list) else [batch]))
    assert kept[-1] == HELLO[0] and tokenized <= len(history) + len(kept) + 2  # each message once, plus the kept part
    answer = chat(live[0], messages=history, max_tokens=100).json()
    assert answer["dropped_messages"] == len(history) - len(kept)


# ----------------------------------------------------------------------------- slow clients, clients that leave


def test_slow_clients_get_408_at_the_deadline_and_connections_are_capped(live):
    address, server, _ = live
    host, port = address.removeprefix("http://").split(":")
    slow = [socket.create_connection((host, int(port)), timeout=60) for _ in range(CONNECTIONS)]
    trickling = threading.Event()
    trickling.set()

    def trickle():  # a byte of a request line every 0.3 s: never silent for the socket timeout
        for _ in range(1000):
            if not trickling.is_set():
                return
            for connection in slow:
                try:
                    connection.sendall(b"x")
                except OSError:
                    pass
            time.sleep(0.3)

    threading.Thread(target=trickle, daemon=True).start()
    try:
        wait_for(lambda: server.slots._value == 0, "every connection slot to be taken")
        status, message = status_and_error(raw(address, post(b"{}")))
        assert status == 503 and f"handling {CONNECTIONS} connections" in message
        for connection in slow:  # each, though it keeps sending, is answered at the deadline and closed
            received = b""
            while chunk := connection.recv(65536):
                received += chunk
            assert status_and_error(received) == (408, f"the whole request must arrive within {DEADLINE} s")
    finally:
        trickling.clear()
        for connection in slow:
            connection.close()
    healthy(address)


def test_a_silent_client_is_closed_after_the_socket_timeout(live):
    address, _, _ = live
    host, port = address.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as silent:
        assert silent.recv(65536) == b""  # closed with no reply, its thread freed: by the socket timeout (the
        # deadline would have sent a 408)


def request_then_leave(address: str, body: dict) -> socket.socket:
    """A non-streamed request sent by a client that will leave (close) while the server works on it."""
    data = json.dumps(body).encode()
    host, port = address.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=60)
    connection.sendall(post(data, "Content-Type: application/json", f"Content-Length: {len(data)}"))
    return connection


def stopped_after(log: list[str]) -> int:
    line = next(line for line in reversed(log) if "its answer stopped after" in line)
    return int(line.split("its answer stopped after ")[1].split()[0])


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_stops_its_answer_within_a_few_tokens(live, stream):
    address, server, log = live
    connection = request_then_leave(address, {"messages": HELLO, "max_tokens": LONG, "stream": stream})
    wait_for(lambda: answering(address), "the answer to start")
    if stream:
        assert connection.recv(1)  # reading the stream
    connection.close()
    wait_for(lambda: not answering(address), "the answer to stop")
    assert stopped_after(log) < LONG // 4  # at most a few tokens after the client left (a whole answer: ~10 s)
    healthy(address)


def test_a_waiting_request_whose_client_left_never_runs(live):
    address, server, log = live
    running = request_then_leave(address, {"messages": HELLO, "max_tokens": LONG})
    wait_for(lambda: answering(address), "the first answer to start")
    queued = request_then_leave(address, {"messages": HELLO, "max_tokens": LONG})
    info = lambda: httpx.get(address + "/api/info").json()  # noqa: E731
    wait_for(lambda: info()["queues"]["fine-tuned"]["waiting"] == 1, "the second request to wait")
    before = info()["counts"].get("left while waiting", 0)
    queued.close()
    wait_for(lambda: info()["counts"].get("left while waiting", 0) == before + 1, "the queue to drop it")
    assert answering(address) and info()["queues"]["fine-tuned"]["waiting"] == 0  # the first is still answering
    running.close()
    wait_for(lambda: not answering(address), "the first answer to stop")
    healthy(address)


# ----------------------------------------------------------------------------- keys and addresses


def test_an_api_key_is_required_when_set_and_ipv6_loopback_is_served(chat_model_dir):
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    server = one_model_server(chat_model_dir, ("::1", 0), api_key="k3y")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://[::1]:{server.server_address[1]}"
    try:
        assert httpx.get(address + "/").status_code == 200  # the page asks for the key
        refused = httpx.get(address + "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        answer = chat(address, headers={"Authorization": "Bearer k3y"})
        assert answer.status_code == 200 and answer.json()["model"] == "base"
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_another_program_holds_is_refused_saying_what_to_do(chat_model_dir):
    from sft.errors import UserError

    with socket.socket() as other:  # another program listening on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(UserError) as refused:
            one_model_server(chat_model_dir, ("127.0.0.1", port))
    assert str(refused.value).startswith(f"cannot serve on 127.0.0.1 port {port}: Address already in use. Pick "
                                         "another --port")


def test_ctrl_c_that_lands_as_a_connections_thread_starts_stops_the_server(chat_model_dir, monkeypatch):
    """Ctrl-C can land in Thread.start() after the connection's thread has already answered and freed its slot
    (seen under load): it must still reach serve_forever's caller, and the slots must stay counted right."""
    import socketserver

    server = one_model_server(chat_model_dir, max_connections=CONNECTIONS)
    start_thread = socketserver.ThreadingMixIn.process_request

    def thread_runs_then_ctrl_c(self, request, client_address):
        before = set(threading.enumerate())
        start_thread(self, request, client_address)
        for thread in set(threading.enumerate()) - before:
            thread.join(60)  # the request answered and its slot freed, before the interrupt below
        raise KeyboardInterrupt

    monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", thread_runs_then_ctrl_c)
    with socket.create_connection(server.server_address, timeout=60) as client:
        client.sendall(b"GET /v1/models HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            with pytest.raises(KeyboardInterrupt):
                server.handle_request()  # one turn of serve_forever's loop
            assert client.recv(4096).startswith(b"HTTP/1.0 200")
        finally:
            server.server_close()
    assert [server.slots.acquire(blocking=False) for _ in range(CONNECTIONS + 1)] == [True] * CONNECTIONS + [False]


def test_the_page_asks_for_the_api_key_in_chromium(chat_model_dir, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = one_model_server(chat_model_dir, about="keyed", titles={"base": "Base model"}, api_key="k3y")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: d.find_element(By.ID, "key-box").is_displayed())
        assert "API key" in browser.find_element(By.ID, "about").text and not browser.find_elements(
            By.CSS_SELECTOR, ".column")
        browser.find_element(By.ID, "api-key").send_keys("k3y")
        browser.find_element(By.ID, "use-key").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".column"))
        assert browser.find_element(By.ID, "about").text == "keyed"
        browser.find_element(By.ID, "message").send_keys("Hello")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".turn.answer[data-done=true] .labels"))
    finally:
        server.shutdown()
        server.server_close()
