"""``scratchllm serve`` as a real process: LLM-as-judge against it, and SIGTERM drains a
running stream before a clean exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from scratchllm.cli.main import build_parser, main
from scratchllm.data.instruction import format_prompt
from scratchllm.generate import generate
from scratchllm.weights.auto import open_model

ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_defaults_and_bad_options(capsys):
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, None)
    assert main(["serve", "--model", "m", "--max-batch", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "scratchllm serve: error: --max-batch must be at least 1, got 0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The tiny model (1024-token context, so a stream can outlast a signal) in a real
    ``scratchllm serve`` process with an API key."""
    from conftest import tiny_model_dir

    model = tiny_model_dir(tmp_path_factory.mktemp("cli") / "judge-model", seed=3,
                           context_length=1024)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "scratchllm", "serve", "--model", str(model), "--port",
         str(port), "--api-key", "k3y", "--max-batch", "4", "--drain-timeout", "20"],
        env=ONE_THREAD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"server did not start: {process.stdout.read()}")
        time.sleep(0.1)
    yield process, url, model
    if process.poll() is None:
        process.kill()
        process.wait()


def test_judge_runs_against_the_server(served, tmp_path, model_dir):
    _, url, judge_model = served
    answerer = open_model(model_dir, device="cpu", require_tokenizer=True)
    entries = []
    for instruction in ["Name a colour.", "Add 2 and 3.", "Say hello."]:
        entry = {"instruction": instruction, "input": "", "output": "An answer."}
        ids = answerer.tokenizer.encode(format_prompt(entry))
        entry["model_response"] = answerer.tokenizer.decode(generate(answerer.model, ids, 8)[len(ids):])
        entries.append(entry)
    responses = tmp_path / "test_responses.json"
    responses.write_text(json.dumps(entries))
    out = tmp_path / "scores.json"
    rc = main(["evaluate", "judge", "--responses", str(responses), "--endpoint", url,
               "--api", "openai", "--model-name", judge_model.name, "--api-key", "k3y",
               "--out", str(out), "--workers", "2", "--retries", "0"])
    assert rc == 0
    scores = json.loads(out.read_text())
    assert len(scores["items"] if "items" in scores else scores["scores"]) == 3
    assert len(out.with_suffix(".jsonl").read_text().splitlines()) == 3


def test_sigterm_drains_the_running_stream_then_exits_cleanly(served):
    process, url, _ = served
    auth = {"Authorization": "Bearer k3y"}
    body = {"prompt": "Once", "max_tokens": 400, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60,
                      headers=auth) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert httpx.get(url + "/health").json()["active"] == 1  # still generating
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # no new connections while draining
            httpx.get(url + "/health", timeout=2)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    usage = json.loads(rest[-2][len("data: "):])["usage"]
    finish = [json.loads(l[6:])["choices"][0]["finish_reason"] for l in rest[:-2]]
    assert usage["completion_tokens"] == 400 or finish[-1] == "stop"
    assert process.wait(timeout=30) == 0
