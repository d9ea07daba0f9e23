"""LLM-as-judge against a fake Ollama / OpenAI server on 127.0.0.1 (never a real network)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scratchllm.cli.main import main
from scratchllm.evaluate.judge import (
    JudgeClient,
    JudgeUnavailableError,
    judge_responses,
    parse_score,
    save_judgement,
)

ENTRIES = [
    {"instruction": "Name a color.", "input": "", "output": "Blue.", "model_response": "Blue."},
    {"instruction": "Add numbers.", "input": "2 + 2", "output": "4", "model_response": "5"},
    {"instruction": "Say hi.", "input": "", "output": "Hi.", "model_response": "?"},
]
REPLIES = {"Blue.": "Score: 95/100", "5": "I would rate this **10**.", "?": "cannot judge"}


class FakeJudge(BaseHTTPRequestHandler):
    """Answers by the graded response; fails the first `fail_first` requests with HTTP 503."""

    requests: list = []
    fail_first = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if len(type(self).requests) <= type(self).fail_first:
            self.send_response(503)
            self.end_headers()
            return
        prompt = body["messages"][0]["content"]
        graded = prompt.split("Answer to grade:\n")[1].split("\n\n")[0]
        text = REPLIES[graded]
        if self.path == "/api/chat":
            reply = {"model": body["model"], "message": {"role": "assistant", "content": text},
                     "done": True}
        elif self.path == "/v1/chat/completions":
            reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    FakeJudge.requests = []
    FakeJudge.fail_first = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nobody listens


@pytest.mark.parametrize("text, score", [("85", 85), ("Score: 85/100", 85), ("**100**", 100),
                                         ("I give it 72.5 points", 72), ("1000 then 40", 40),
                                         ("no number", None), ("", None)])
def test_parse_score(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("api, path", [("ollama", "/api/chat"), ("openai", "/v1/chat/completions")])
def test_both_apis_score_and_average(server, api, path, tmp_path):
    client = JudgeClient(server, model="judge-x", api=api, retries=0)
    result = judge_responses(ENTRIES, client)
    assert result.scores == [95, 10, None]
    assert result.average == pytest.approx(52.5) and result.n_unparsed == 1
    paths = {p for p, _ in FakeJudge.requests}
    assert paths == {path}
    body = FakeJudge.requests[0][1]
    assert body["model"] == "judge-x"
    if api == "ollama":
        assert body["stream"] is False and body["options"]["temperature"] == 0
    out = save_judgement(tmp_path / "scores.json", result)
    saved = json.loads(out.read_text())
    assert saved["average_score"] == pytest.approx(52.5)
    assert [i["score"] for i in saved["items"]] == [95, 10, None]


def test_transient_failure_is_retried(server):
    FakeJudge.fail_first = 2
    client = JudgeClient(server, retries=3, backoff=0.01)
    assert client.chat("Answer to grade:\nBlue.\n\n") == "Score: 95/100"
    assert len(FakeJudge.requests) == 3


def test_retries_exhausted_is_a_clear_error(server):
    FakeJudge.fail_first = 10
    client = JudgeClient(server, retries=1, backoff=0.01)
    with pytest.raises(JudgeUnavailableError, match="failed 2 times"):
        client.chat("x")


def test_connection_refused_says_how_to_start_a_judge():
    client = JudgeClient(f"http://127.0.0.1:{closed_port()}", retries=3, backoff=5.0)
    with pytest.raises(JudgeUnavailableError, match="ollama serve"):
        client.chat("hello")  # fails at once: no 5 s backoff


def test_cli_judge(server, tmp_path, capsys):
    responses = tmp_path / "test_responses.json"
    responses.write_text(json.dumps(ENTRIES), encoding="utf-8")
    code = main(["evaluate", "judge", "--responses", str(responses), "--endpoint", server,
                 "--api", "openai"])
    assert code == 0
    assert "average score: 52.50" in capsys.readouterr().out
    saved = json.loads((tmp_path / "test_responses.scores.json").read_text())
    assert saved["n_scored"] == 2


def test_cli_judge_unreachable_is_one_line(tmp_path, capsys):
    responses = tmp_path / "r.json"
    responses.write_text(json.dumps(ENTRIES), encoding="utf-8")
    code = main(["evaluate", "judge", "--responses", str(responses), "--endpoint",
                 f"http://127.0.0.1:{closed_port()}"])
    err = capsys.readouterr().err
    assert code == 2 and "connection refused" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.scores.json").exists()
