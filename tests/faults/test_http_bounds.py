"""The HTTP judge's calls are bounded: a total deadline per request, a cap on the answer's size, http(s) only,
and a malformed answer is a clear error or a counted tie."""

import json
import socket
import threading
import time

import pytest
from typer.testing import CliRunner

from spreadpref.cli import app
from spreadpref.errors import JudgeError
from spreadpref.judges.llm import HTTPLLMJudge, judge_messages

PROMPT = [{"role": "user", "content": "Name a colour."}]
QUESTION = [judge_messages(PROMPT, "Blue.", "Seven.")]


class RawServer:
    """A TCP server whose every connection gets ``respond(connection)``: for answers no HTTP library would send."""

    def __init__(self, respond):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.stop = threading.Event()
        self.respond = respond
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection):
        with connection:
            connection.recv(65536)
            try:
                self.respond(connection, self.stop)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.fixture
def raw():
    servers = []

    def start(respond):
        servers.append(RawServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def dripping(head: bytes, piece: bytes):
    """A server that sends ``head``, then ``piece`` every 0.2 s and never finishes: each read is quick, the request
    never ends."""

    def respond(connection, stop):
        connection.sendall(head)
        while not stop.is_set():
            connection.sendall(piece)
            time.sleep(0.2)

    return respond


JSON_LENGTH = b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
# Valid headers, then the body one byte at a time.
drip = dripping(b"HTTP/1.1 200 OK\r\n" + JSON_LENGTH, b" ")
# HTTP/1.0 with a length: http.client hands the socket to the response.
drip_closing = dripping(b"HTTP/1.0 200 OK\r\n" + JSON_LENGTH, b" ")
# Headers that never end.
drip_headers = dripping(b"HTTP/1.1 200 OK\r\n", b"X-Slow: a\r\n")
# Chunked transfer encoding, a one-byte chunk at a time, never the last chunk.
drip_chunked = dripping(
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\n \r\n"
)


def silent(connection, stop):
    """Accepts the connection, reads the request, never answers."""
    stop.wait()


def headers_then_silence(connection, stop):
    """Complete headers with a length, then nothing at all."""
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    stop.wait()


def flood(connection, stop):
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
    block = b"x" * 65536
    for _ in range(64):  # 4 MB
        if stop.is_set():
            return
        connection.sendall(block)


def not_json(connection, stop):
    body = b"<html>gateway says hello</html>"
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def no_choices(connection, stop):
    body = json.dumps({"error": "x" * 10_000}).encode()
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def choices_not_a_list(connection, stop):
    body = b'{"choices": "nope"}'
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def cut_short(connection, stop):
    connection.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"choices": [')


@pytest.mark.parametrize(
    "respond",
    [drip, drip_closing, drip_headers, drip_chunked, silent, headers_then_silence],
    ids=["slow-body", "slow-body-http1.0", "slow-headers", "slow-chunks", "no-headers", "headers-then-nothing"],
)
def test_a_slow_drip_server_hits_the_total_deadline(raw, respond):
    server = raw(respond)
    judge = HTTPLLMJudge(server.url, "m", max_retries=1, timeout=1.0, sleep=lambda s: None)
    started = time.perf_counter()
    with pytest.raises(JudgeError, match=r"after 2 tries \(no complete answer within judge.llm.timeout=1 s\)"):
        judge.prob_first(QUESTION)
    assert time.perf_counter() - started < 6  # two tries of one second, not forever


def test_a_socket_timeout_before_the_watchdog_runs_is_the_same_deadline(raw, monkeypatch):
    # On a busy machine the socket's own timeout (as long as the deadline) can fire before the watchdog thread
    # runs: here the watchdog never does.
    import spreadpref.judges.llm as llm

    class IdleTimer:
        daemon = False

        def __init__(self, *args, **kwargs):
            pass

        def start(self):
            pass

        def cancel(self):
            pass

    monkeypatch.setattr(llm.threading, "Timer", IdleTimer)
    judge = HTTPLLMJudge(raw(silent).url, "m", max_retries=1, timeout=1.0, sleep=lambda s: None)
    with pytest.raises(JudgeError, match=r"after 2 tries \(no complete answer within judge.llm.timeout=1 s\)"):
        judge.prob_first(QUESTION)


def test_an_endless_answer_is_cut_at_the_size_cap(raw):
    judge = HTTPLLMJudge(raw(flood).url, "m", max_retries=3, timeout=30, sleep=lambda s: None)
    with pytest.raises(JudgeError, match="sent more than 1 MB"):
        judge.prob_first(QUESTION)


@pytest.mark.parametrize(
    ("respond", "message"),
    [
        (not_json, "a reply that is not JSON"),
        (cut_short, r"after 2 tries"),
        (no_choices, "without a usable choice"),
        (choices_not_a_list, "without a usable choice"),
    ],
    ids=["not-json", "cut-short", "no-choices", "choices-not-a-list"],
)
def test_malformed_answers_are_clear_errors(raw, respond, message):
    judge = HTTPLLMJudge(raw(respond).url, "m", max_retries=1, timeout=5, sleep=lambda s: None)
    with pytest.raises(JudgeError, match=message) as err:
        judge.prob_first(QUESTION)
    assert len(str(err.value)) < 600  # never the whole answer


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/v1", "localhost:8000/v1", "http:///v1"])
def test_only_http_and_https_endpoints(url):
    with pytest.raises(JudgeError, match="only http:// and https://"):
        HTTPLLMJudge(url, "m")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://x"])
def test_a_non_http_base_url_is_refused_when_the_config_loads(url):
    result = CliRunner().invoke(app, ["config", f"judge.llm.base_url={url}", "judge.llm.api_model=m"])
    assert result.exit_code == 2 and "only http:// and https://" in result.output and "Traceback" not in result.output
