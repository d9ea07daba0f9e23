"""LLM-as-judge against a fake Ollama / OpenAI server on 127.0.0.1 (never a real network).

The HTTP client's limits (deadline, size cap, redirects, concurrency) and resumable runs are
in test_eval_judge_runs.py."""

from __future__ import annotations

import json
import socket

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
# The fake judge (conftest.py) answers "Blue." with 95, "5" with 10 and "?" with no number.


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
def test_both_apis_score_and_average(judge_server, api, path, tmp_path):
    client = JudgeClient(judge_server.url, model="judge-x", api=api, retries=0)
    result = judge_responses(ENTRIES, client)
    assert result.scores == [95, 10, None]
    assert result.average == pytest.approx(52.5) and result.n_unparsed == 1
    paths = {p for p, _, _ in judge_server.requests}
    assert paths == {path}
    body = judge_server.requests[0][1]
    assert body["model"] == "judge-x"
    if api == "ollama":  # the reply length is bounded, in each API's own words
        assert body["stream"] is False and body["options"]["temperature"] == 0
        assert body["options"]["num_predict"] == 16 and "max_tokens" not in body
    else:
        assert body["max_tokens"] == 16 and body["temperature"] == 0
    assert "authorization" not in judge_server.requests[0][2]  # no key given, none sent
    out = save_judgement(tmp_path / "scores.json", result)
    saved = json.loads(out.read_text())
    assert saved["average_score"] == pytest.approx(52.5)
    assert [i["score"] for i in saved["items"]] == [95, 10, None]


def test_transient_failure_is_retried(judge_server):
    judge_server.fail_first = 2
    client = JudgeClient(judge_server.url, retries=3, backoff=0.01)
    assert client.chat("Answer to grade:\nBlue.\n\n") == "Score: 95/100"
    assert len(judge_server.requests) == 3


def test_retries_exhausted_is_a_clear_error(judge_server):
    judge_server.fail_first = 10
    client = JudgeClient(judge_server.url, retries=1, backoff=0.01)
    with pytest.raises(JudgeUnavailableError, match="failed 2 times.*HTTP 503"):
        client.chat("Answer to grade:\nBlue.\n\n")


def test_connection_refused_says_how_to_start_a_judge():
    client = JudgeClient(f"http://127.0.0.1:{closed_port()}", retries=3, backoff=5.0)
    with pytest.raises(JudgeUnavailableError, match="ollama serve"):
        client.chat("hello")  # fails at once: no 5 s backoff


def test_cli_judge(judge_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    responses = tmp_path / "test_responses.json"
    responses.write_text(json.dumps(ENTRIES), encoding="utf-8")
    code = main(["evaluate", "judge", "--responses", str(responses), "--endpoint",
                 judge_server.url, "--api", "openai", "--max-tokens", "5"])
    assert code == 0
    assert "average score: 52.50" in capsys.readouterr().out
    saved = json.loads((tmp_path / "test_responses.scores.json").read_text())
    assert saved["n_scored"] == 2 and saved["average_score"] == pytest.approx(52.5)
    assert [i["score"] for i in saved["items"]] == [95, 10, None]
    assert saved["items"][0]["judge_reply"] == "Score: 95/100"
    lines = (tmp_path / "test_responses.scores.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in lines) == [0, 1, 2]
    for _, body, headers in judge_server.requests:
        assert headers["authorization"] == "Bearer sk-from-env" and body["max_tokens"] == 5


def test_cli_key_flag_and_ollama_ignores_the_openai_env_key(judge_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    responses = tmp_path / "r.json"
    responses.write_text(json.dumps(ENTRIES[:1]), encoding="utf-8")
    base = ["evaluate", "judge", "--responses", str(responses), "--endpoint", judge_server.url]
    assert main(base) == 0
    assert "authorization" not in judge_server.requests[-1][2]
    assert main(base + ["--api-key", "sk-flag"]) == 0
    assert judge_server.requests[-1][2]["authorization"] == "Bearer sk-flag"
    assert judge_server.requests[-1][1]["options"]["num_predict"] == 16


def test_cli_judge_unreachable_is_one_line(tmp_path, capsys):
    responses = tmp_path / "r.json"
    responses.write_text(json.dumps(ENTRIES), encoding="utf-8")
    code = main(["evaluate", "judge", "--responses", str(responses), "--endpoint",
                 f"http://127.0.0.1:{closed_port()}"])
    err = capsys.readouterr().err
    assert code == 2 and "connection refused" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.scores.json").exists()
