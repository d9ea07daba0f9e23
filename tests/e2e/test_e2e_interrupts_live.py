"""Interrupting the commands that talk: ``evaluate judge`` (to a judge server), ``chat`` (to a
person at a terminal) and ``serve`` (to HTTP clients), by Ctrl-C, SIGTERM or the other side
going away: exit codes, the one line said, what is kept, and that nobody is left hanging.

The judge is a stand-in server in this process; chat and serve run ``chatty_model``, which
never stops answering early, so a signal always lands mid-answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from e2e_support import start_serve, wait_for_moment

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- evaluate judge

class _SlowJudge:
    """An Ollama stand-in on 127.0.0.1 that thinks ``delay`` seconds per request and gives
    every answer 70; ``stop()`` takes it down as a crashed judge goes (connections refused)."""

    def __init__(self, delay: float = 0.1) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        judge = self
        self.delay, self.asked = delay, 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers["Content-Length"]))
                judge.asked += 1
                time.sleep(judge.delay)
                body = json.dumps({"message": {"role": "assistant", "content": "Score: 70"}})
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body.encode())
                except OSError:
                    pass  # the client hung up (it was stopped)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def slow_judge():
    judge = _SlowJudge()
    yield judge
    judge.stop()


@pytest.fixture
def forty_answers(tmp_path) -> Path:
    import json

    path = tmp_path / "test_responses.json"
    path.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": str(i),
                                 "model_response": str(i)} for i in range(40)]))
    return path


def _judged(items: Path) -> list[int]:
    """The indexes in the per-item log; every line must be whole JSON (none cut mid-line)."""
    import json

    text = items.read_text(encoding="utf-8")
    assert text.endswith("\n"), text[-200:]
    return [json.loads(line)["index"] for line in text.splitlines()]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_judge_stopped_mid_run_keeps_whole_items_and_resume_asks_only_the_rest(
        cli, cli_runner, slow_judge, forty_answers, tmp_path, signum):
    """Ctrl-C or SIGTERM while 4 requests are in flight: exit 130/143 at once (SIGTERM used to
    be swallowed inside asyncio/anyio now and then: all 40 items judged, then exit 143 with no
    scores file) with one line saying what is kept and to continue with --resume (it said
    only "interrupted", and a rerun without --resume judges everything again); the per-item
    log whole lines only, no scores file yet; ``--resume`` asks only about the rest."""
    out = tmp_path / "scores.json"
    items = out.with_suffix(".jsonl")
    argv = ["evaluate", "judge", "--responses", forty_answers, "--endpoint", slow_judge.url,
            "--workers", "4", "--out", out]
    started = cli_runner.start(argv)
    wait_for_moment(lambda: items.is_file() and items.read_bytes().count(b"\n") >= 5,
                    started, cli_runner)
    cli_runner.signal(started, signum)
    done = cli_runner.finish(started, timeout=30)
    assert done.returncode == 128 + signum, done.stderr
    word = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    assert "Traceback" not in done.stderr and done.stdout == ""
    kept = _judged(items)
    said = [line for line in done.stderr.splitlines() if "judge: item" not in line]
    assert said == [f"{word} after {len(kept)} of 40 items; kept in {items}; "
                    "continue with --resume"], done.stderr
    assert 5 <= len(kept) <= 5 + 4 + 2 and len(set(kept)) == len(kept), kept  # stopped at once
    assert not out.exists()
    asked = slow_judge.asked
    proc = cli([*argv, "--resume"])
    assert slow_judge.asked - asked == 40 - len(kept)
    assert sorted(_judged(items)) == list(range(40))
    assert "average score: 70.00 / 100 over 40 responses" in proc.stdout


def test_a_judge_that_dies_mid_run_is_one_line_and_resume_goes_on_elsewhere(
        cli, cli_runner, slow_judge, forty_answers, tmp_path):
    """The judge server goes away mid-run: one line saying how many items are kept and to
    add --resume (not a traceback, not a hang); resuming against another judge server of
    the same model asks it only about the rest."""
    out = tmp_path / "scores.json"
    items = out.with_suffix(".jsonl")
    argv = ["evaluate", "judge", "--responses", forty_answers, "--workers", "2", "--out", out,
            "--retries", "1"]
    started = cli_runner.start([*argv, "--endpoint", slow_judge.url])
    wait_for_moment(lambda: items.is_file() and items.read_bytes().count(b"\n") >= 5,
                    started, cli_runner)
    slow_judge.stop()
    done = cli_runner.finish(started, timeout=60)
    assert done.returncode == 2, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("scratchllm evaluate: error: ") and "Traceback" not in done.stderr
    kept = _judged(items)
    assert f"the {len(kept)} items judged so far are kept in {items}" in last, last
    assert "add --resume" in last and not out.exists()
    other = _SlowJudge(delay=0)
    try:
        cli([*argv, "--endpoint", other.url, "--resume"])
    finally:
        other.stop()
    assert other.asked == 40 - len(kept)
    assert sorted(_judged(items)) == list(range(40))


# --------------------------------------------------------------------------- chat

def _streaming(started, bytes_out: int = 20):
    """A condition: the answer has begun on stdout (after the banner, which goes to stderr)."""
    out = Path(started[2]["stdout"])
    return lambda: out.is_file() and out.stat().st_size >= bytes_out


def test_chat_sigterm_mid_answer_ends_the_answer_line_then_one_line(cli_runner, chatty_model):
    """SIGTERM while an answer streams: exit 143; the cut answer's line is ended, so the
    reason is a line of its own (it used to run on after the answer's last word)."""
    started = cli_runner.start(["chat", "--model", chatty_model, "--max-new-tokens", "900",
                                "--device", "cpu"], stdin="Hello\n/quit\n")
    wait_for_moment(_streaming(started), started, cli_runner)
    cli_runner.signal(started, signal.SIGTERM)
    done = cli_runner.finish(started, timeout=30)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stdout.endswith("\n") and done.stdout.count("\n") == 1, done.stdout[-200:]
    assert done.stderr.splitlines()[-1] == "scratchllm chat: stopped by SIGTERM"
    assert "Traceback" not in done.stderr


def test_chat_ctrl_c_mid_answer_keeps_the_chat_and_end_of_input_ends_it(cli_runner,
                                                                         chatty_model):
    """Ctrl-C stops only the answer (a note on stderr, the cut answer's line ended); the
    next message is answered in full, and the end of input ends the chat with exit 0."""
    started = cli_runner.start(["chat", "--model", chatty_model, "--max-new-tokens", "60",
                                "--device", "cpu"], stdin="Hello\nAgain\n")
    wait_for_moment(_streaming(started, 2), started, cli_runner)
    cli_runner.signal(started, signal.SIGINT)
    done = cli_runner.finish(started, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("[answer stopped; kept in the history as cut]") == 1, done.stderr
    cut, full = done.stdout.split("\n")[:2]
    assert done.stdout == f"{cut}\n{full}\n" and len(full) > len(cut)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_chat_signalled_at_a_terminal_prompt_leaves_the_terminal_as_it_was(cli_runner,
                                                                          chatty_model, signum):
    """``chat`` on a real terminal (a pty: readline is on) and SIGTERM at the ``> `` prompt:
    exit 143, the terminal's modes as before (echo and line editing back), and the reason on
    its own line, not after ``> ``. Ctrl-C there ends the chat quietly: exit 0, a newline."""
    import pty
    import select
    import sys
    import termios

    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", "chat", "--model",
                             chatty_model, "--device", "cpu"], stdin=slave, stdout=slave,
                            stderr=slave, env=cli_runner.env, cwd=cli_runner.cwd)
    shown = b""

    def read(seconds: float) -> None:
        nonlocal shown
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([master], [], [], 0.02)[0]:
                try:
                    shown += os.read(master, 65536)
                except OSError:  # the child closed its side
                    return

    try:
        deadline = time.monotonic() + 60
        while not shown.endswith(b"> ") and proc.poll() is None:
            assert time.monotonic() < deadline, shown
            read(0.05)
        proc.send_signal(signum)
        assert proc.wait(30) == (0 if signum == signal.SIGINT else 128 + signum), shown
        read(0.2)
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
    text = shown.decode("utf-8", "replace")
    reason = "" if signum == signal.SIGINT else "scratchllm chat: stopped by SIGTERM\r\n"
    assert text.endswith("> \r\n" + reason), text[-300:]
    assert "Traceback" not in text


# --------------------------------------------------------------------------- serve

@pytest.mark.parametrize("second", [None, signal.SIGINT], ids=["drain-deadline", "ctrl-c-again"])
def test_serve_sigterm_mid_stream_cuts_it_at_the_deadline_and_exits(cli_runner, chatty_model,
                                                                    second):
    """SIGTERM while a 1000-token stream runs: past --drain-timeout (or at a Ctrl-C that
    follows the SIGTERM: force quit) the server closes the stream, which the client sees as
    a cut body, not a hang, and exits 0 at once; the cancelled request is no traceback in
    the log (uvicorn printed a CancelledError traceback per cut request, and for the app's
    lifespan on a force quit)."""
    import httpx

    drain = "0.5" if second is None else "30"
    server, base = start_serve(cli_runner, ["--model", chatty_model, "--device", "cpu",
                                            "--max-batch", "2", "--drain-timeout", drain])
    events, outcome = 0, None
    try:
        with httpx.stream("POST", f"{base}/v1/completions", trust_env=False, timeout=60,
                          json={"prompt": "Once", "max_tokens": 1000, "temperature": 0,
                                "stream": True}) as response:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue  # the blank line after each event
                events += 1
                if events == 3:
                    cli_runner.signal(server, signal.SIGTERM)
                    signalled = time.monotonic()
                    if second is not None:
                        time.sleep(0.2)
                        cli_runner.signal(server, second)
                assert line != "data: [DONE]", "the stream finished before the deadline"
    except httpx.RemoteProtocolError as err:  # the body ended mid-chunk: the cut
        outcome = err
    finally:
        done = cli_runner.finish(server, timeout=60)
    assert outcome is not None and 3 <= events < 1000
    assert time.monotonic() - signalled < float(drain) + 10
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "CancelledError" not in done.stderr, done.stderr



def test_serve_answers_503_to_a_request_cut_at_the_drain_deadline(cli_runner, chatty_model):
    """A non-streamed request still decoding (and one still queued behind it) when the
    SIGTERM drain deadline passes gets HTTP 503 saying the server shut down, not uvicorn's
    bare "500 Internal Server Error", which reads as a bug in the server."""
    import threading

    import httpx

    server, base = start_serve(cli_runner, ["--model", chatty_model, "--device", "cpu",
                                            "--max-batch", "1", "--drain-timeout", "0.3"])
    answers: dict[str, httpx.Response] = {}

    def ask(name: str) -> None:
        answers[name] = httpx.post(f"{base}/v1/completions", trust_env=False, timeout=60,
                                   json={"prompt": "Once", "max_tokens": 1000})

    clients = [threading.Thread(target=ask, args=(name,)) for name in ("running", "queued")]
    try:
        for client in clients:
            client.start()
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/health", trust_env=False).json()["queued"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cli_runner.signal(server, signal.SIGTERM)
        for client in clients:
            client.join(30)
    finally:
        done = cli_runner.finish(server, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    for name, answer in answers.items():
        assert answer.status_code == 503, (name, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "server_shutting_down" and "--drain-timeout" in error["message"]
