"""A fake judge (Ollama and OpenAI chat APIs) on 127.0.0.1 that tests can make slow or hostile."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

REPLIES = {"Blue.": "Score: 95/100", "5": "I would rate this **10**.", "?": "cannot judge"}


class JudgeServer:
    """One server in a thread. Knobs (set before or between requests):

    ``fail_first``: answer the first N requests with HTTP 503; ``delay``: seconds to think
    before answering; ``reject``: graded answers to refuse with HTTP 400; ``trickle``: send the
    reply one byte per 0.1 s; ``huge``: send this many bytes with no Content-Length;
    ``redirect_to``: answer 307 to this URL (same path).
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, dict]] = []  # (path, body, lower-cased headers)
        self.fail_first = 0
        self.delay = 0.0
        self.reject: set[str] = set()
        self.trickle = False
        self.huge = 0
        self.redirect_to: str | None = None
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.judge = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def graded(self) -> list[str]:
        """The graded answer of each request, in arrival order."""
        return [body["messages"][0]["content"].split("Answer to grade:\n")[1].split("\n\n")[0]
                for _, body, _ in self.requests]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        judge: JudgeServer = self.server.judge  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with judge.lock:
            judge.requests.append((self.path, body, {k.lower(): v for k, v in self.headers.items()}))
            number = len(judge.requests)
            judge.in_flight += 1
            judge.max_in_flight = max(judge.max_in_flight, judge.in_flight)
        try:
            self._answer(judge, body, number)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up (deadline, size cap): expected in those tests
        finally:
            with judge.lock:
                judge.in_flight -= 1

    def _answer(self, judge: JudgeServer, body: dict, number: int) -> None:
        time.sleep(judge.delay)
        if judge.redirect_to:
            self.send_response(307)
            self.send_header("Location", judge.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        prompt = body["messages"][0]["content"]
        graded = prompt.split("Answer to grade:\n")[1].split("\n\n")[0]
        if number <= judge.fail_first or graded in judge.reject:
            self.send_response(503 if number <= judge.fail_first else 400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if judge.huge:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")  # the body ends when the socket closes
            self.end_headers()
            block = b" " * 65536
            for _ in range(judge.huge // len(block)):
                self.wfile.write(block)
            return
        text = REPLIES.get(graded, "Score: 50")
        if self.path == "/api/chat":
            reply = {"model": body["model"], "message": {"role": "assistant", "content": text},
                     "done": True}
        elif self.path == "/v1/chat/completions":
            reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if judge.trickle:  # every byte arrives well within any socket timeout
            for byte in data:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def start_judge():
    """Start fake judges on demand; all are stopped after the test."""
    servers: list[JudgeServer] = []

    def start() -> JudgeServer:
        servers.append(JudgeServer())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def judge_server(start_judge) -> JudgeServer:
    return start_judge()
