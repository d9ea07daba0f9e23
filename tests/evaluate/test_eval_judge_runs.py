"""The judge client's limits and resumable runs, against fake judges on 127.0.0.1 (conftest.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from scratchllm.cli.main import main
from scratchllm.errors import DataError
from scratchllm.evaluate.judge import JudgeClient, JudgeUnavailableError, judge_responses


def entries(n: int) -> list[dict]:
    return [{"instruction": f"Task {i}.", "input": "", "output": "Blue.", "model_response": f"a{i}"}
            for i in range(n)]


def test_workers_overlap_requests(judge_server):
    judge_server.delay = 0.4
    client = JudgeClient(judge_server.url, retries=0)
    start = time.perf_counter()
    result = judge_responses(entries(4), client, workers=4)
    elapsed = time.perf_counter() - start
    assert result.scores == [50, 50, 50, 50]
    assert judge_server.max_in_flight == 4  # all four were at the server at the same time
    assert elapsed < 1.2  # about one slow request (0.4 s), not four (1.6 s)


def test_one_worker_sends_one_request_at_a_time(judge_server):
    judge_server.delay = 0.05
    judge_responses(entries(3), JudgeClient(judge_server.url, retries=0), workers=1)
    assert judge_server.max_in_flight == 1
    assert judge_server.graded() == ["a0", "a1", "a2"]


def test_deadline_is_total_not_per_read(judge_server):
    # One byte every 0.1 s: no single read ever waits long, so only a total deadline fires.
    judge_server.trickle = True
    client = JudgeClient(judge_server.url, timeout=0.5, retries=0)
    start = time.perf_counter()
    with pytest.raises(JudgeUnavailableError, match="0.5 s deadline"):
        client.chat("Answer to grade:\nBlue.\n\n")
    assert time.perf_counter() - start < 2.0  # the whole reply would take ~10 s


def test_reply_size_is_capped(judge_server):
    judge_server.huge = 8 << 20  # 8 MiB of "JSON", no Content-Length
    client = JudgeClient(judge_server.url, retries=3, backoff=5.0, max_response_bytes=64 << 10)
    start = time.perf_counter()
    with pytest.raises(JudgeUnavailableError, match="65,536-byte limit"):
        client.chat("Answer to grade:\nBlue.\n\n")
    assert time.perf_counter() - start < 4.0  # stopped reading at once, and not retried
    assert len(judge_server.requests) == 1


def test_redirect_to_another_host_drops_the_api_key(start_judge):
    first, second = start_judge(), start_judge()  # two ports: two origins
    first.redirect_to = second.url
    client = JudgeClient(first.url, api="openai", api_key="sk-secret", retries=0)
    assert client.chat("Answer to grade:\nBlue.\n\n") == "Score: 95/100"
    assert first.requests[0][2]["authorization"] == "Bearer sk-secret"
    path, body, headers = second.requests[0]
    assert path == "/v1/chat/completions" and body["max_tokens"] == 16  # 307 keeps POST + body
    assert "authorization" not in headers


def test_crash_keeps_finished_items_and_resume_skips_them(judge_server, tmp_path):
    items = tmp_path / "scores.jsonl"
    client = JudgeClient(judge_server.url, retries=0)
    judge_server.reject = {"a3"}  # item 3 fails for good (HTTP 400) after items 0-2
    with pytest.raises(JudgeUnavailableError, match="HTTP 400"):
        judge_responses(entries(6), client, items_path=items)
    kept = [json.loads(line) for line in items.read_text().splitlines()]
    assert [r["index"] for r in kept] == [0, 1, 2] and {r["score"] for r in kept} == {50}

    judge_server.reject = set()
    judge_server.requests.clear()
    seen = []
    result = judge_responses(entries(6), client, items_path=items, resume=True,
                             on_item=lambda index, score: seen.append(index))
    assert judge_server.graded() == ["a3", "a4", "a5"]  # only what was left
    assert seen == [3, 4, 5] and result.scores == [50] * 6
    assert [i["model_response"] for i in result.items] == [f"a{i}" for i in range(6)]
    assert len(items.read_text().splitlines()) == 6

    judge_server.requests.clear()  # a finished run resumed asks nothing
    assert judge_responses(entries(6), client, items_path=items, resume=True).scores == [50] * 6
    assert judge_server.requests == []


def test_torn_last_line_is_judged_again(judge_server, tmp_path):
    items = tmp_path / "scores.jsonl"
    client = JudgeClient(judge_server.url, retries=0)
    judge_responses(entries(2), client, items_path=items)
    lines = items.read_text().splitlines()
    items.write_text(lines[0] + "\n" + lines[1][:10])  # killed while writing item 1
    judge_server.requests.clear()
    assert judge_responses(entries(2), client, items_path=items, resume=True).scores == [50, 50]
    assert judge_server.graded() == ["a1"]
    assert [json.loads(line)["index"] for line in items.read_text().splitlines()[::2]] == [0, 1]


def test_resume_refuses_scores_of_another_judge(judge_server, tmp_path):
    items = tmp_path / "scores.jsonl"
    judge_responses(entries(2), JudgeClient(judge_server.url, model="a"), items_path=items)
    with pytest.raises(DataError, match="another judge"):
        judge_responses(entries(2), JudgeClient(judge_server.url, model="b"), items_path=items,
                        resume=True)
    other = entries(2)
    other[1]["model_response"] = "changed"
    with pytest.raises(DataError, match="another responses file"):
        judge_responses(other, JudgeClient(judge_server.url, model="a"), items_path=items,
                        resume=True)


def test_cli_workers_crash_and_resume(judge_server, tmp_path, capsys):
    responses = tmp_path / "r.json"
    responses.write_text(json.dumps(entries(5)), encoding="utf-8")
    args = ["evaluate", "judge", "--responses", str(responses), "--endpoint", judge_server.url,
            "--retries", "0"]
    judge_server.reject = {"a2"}
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the 2 items judged so far are kept" in err and "--resume" in err
    assert len(err.strip().splitlines()[-1:]) == 1 and "Traceback" not in err
    assert not (tmp_path / "r.scores.json").exists()

    judge_server.reject = set()
    judge_server.requests.clear()
    assert main(args + ["--resume", "--workers", "3"]) == 0
    captured = capsys.readouterr()
    assert sorted(judge_server.graded()) == ["a2", "a3", "a4"]
    assert "resuming: 2 of 5 items" in captured.err and "average score: 50.00" in captured.out
    saved = json.loads((tmp_path / "r.scores.json").read_text())
    assert [i["model_response"] for i in saved["items"]] == [f"a{i}" for i in range(5)]


def test_bad_worker_count_is_a_config_error(judge_server):
    with pytest.raises(ValueError, match="workers must be at least 1"):
        judge_responses(entries(1), JudgeClient(judge_server.url), workers=0)


def test_works_where_an_event_loop_already_runs(judge_server):
    # Jupyter runs an event loop; the plain functions must still work inside one.
    async def notebook_cell():
        return judge_responses(entries(2), JudgeClient(judge_server.url), workers=2).scores

    assert asyncio.run(notebook_cell()) == [50, 50]


def test_an_unreachable_judge_leaves_no_empty_item_file(tmp_path):
    """Nothing judged: the per-item log this run would have started is not left behind."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    items = tmp_path / "scores.jsonl"
    with pytest.raises(JudgeUnavailableError):
        judge_responses(entries(2), JudgeClient(f"http://127.0.0.1:{port}", retries=0),
                        items_path=items)
    assert not items.exists()


class _Stopped(BaseException):
    """What a caller's SIGTERM handler raises (the CLI's is ``Terminated``)."""


def test_sigterm_reaches_the_callers_handler_after_the_requests_unwind(judge_server, tmp_path):
    """SIGTERM mid-run: the caller's handler runs once the event loop has closed, not inside
    it, where asyncio and anyio catch or defer a BaseException raised at a random moment (a
    real ``kill`` was seen to let all 40 items be judged, then exit 143 with no scores). The
    run stops at once; the items finished stay in the log and --resume asks only the rest."""
    import os

    judge_server.delay = 0.05
    seen: list[bool] = []

    def handler(signum, frame) -> None:
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        raise _Stopped

    def on_item(index: int, score) -> None:
        if len(items.read_text().splitlines()) == 3 and not seen:
            os.kill(os.getpid(), signal.SIGTERM)

    items = tmp_path / "scores.jsonl"
    client = JudgeClient(judge_server.url, retries=0)
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(_Stopped):
            judge_responses(entries(20), client, workers=2, items_path=items, on_item=on_item)
        assert signal.getsignal(signal.SIGTERM) is handler  # the caller's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [False]  # called once, outside the loop
    kept = [json.loads(line)["index"] for line in items.read_text().splitlines()]
    asked = len(judge_server.requests)
    assert 3 <= len(kept) <= asked <= 5  # the requests in flight at the signal, no new ones
    result = judge_responses(entries(20), client, workers=2, items_path=items, resume=True)
    assert len(judge_server.requests) - asked == 20 - len(kept)
    assert result.scores == [50] * 20


def test_sigterm_with_no_handler_still_ends_the_process_after_the_unwind(tmp_path):
    """A plain script (Python's default SIGTERM action): the deferred signal is delivered with
    that default once the requests unwind, so the process still ends by SIGTERM, promptly,
    with whole lines in the item log."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "judge_script.py"
    items = tmp_path / "scores.jsonl"
    script.write_text(textwrap.dedent(f"""
        import json, os, signal, threading, time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from scratchllm.evaluate.judge import JudgeClient, judge_responses

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(0.05)
                body = json.dumps({{"message": {{"content": "Score: 60"}}}}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        entries = [{{"instruction": f"T{{i}}", "input": "", "output": "x", "model_response": "y"}}
                   for i in range(40)]
        def on_item(index, score):
            if index == 2:
                os.kill(os.getpid(), signal.SIGTERM)
        judge_responses(entries, JudgeClient(f"http://127.0.0.1:{{server.server_port}}",
                                             retries=0),
                        workers=2, items_path={str(items)!r}, on_item=on_item)
        print("not stopped")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == -signal.SIGTERM, done.stdout + done.stderr
    lines = items.read_text().splitlines()
    assert 3 <= len(lines) < 10 and all(json.loads(line)["score"] == 60 for line in lines)
