"""``scratchllm serve`` on the command line: options, LLM-as-judge against a server, and a
real SIGTERM that drains the running stream before a clean exit (code 0)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import httpx
import pytest

from serve_support import tiny_model_dir

from scratchllm.cli.main import build_parser, main
from scratchllm.data.instruction import format_prompt
from scratchllm.generate import generate
from scratchllm.weights.auto import open_model


def test_defaults_and_bad_options(capsys):
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, None)
    assert main(["serve", "--model", "m", "--max-batch", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "scratchllm serve: error: --max-batch must be at least 1, got 0"


@pytest.mark.parametrize("host, key, warned", [
    ("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False),
    ("0.0.0.0", None, True), ("192.168.1.5", None, True), ("my-box.local", None, True),
    ("0.0.0.0", "k", False)])
def test_a_server_others_can_reach_without_a_key_is_warned_about(host, key, warned):
    from scratchllm.cli.serve import open_host_warning

    warning = open_host_warning(host, key)
    assert (warning is not None) == warned
    if warned:
        assert host in warning and "--api-key" in warning


def test_judge_runs_against_the_server(server, model_dir, tmp_path):
    """One tiny model (the server's) judges another tiny model's answers."""
    answerer = open_model(tiny_model_dir(tmp_path / "answerer", seed=5), device="cpu",
                          require_tokenizer=True)
    entries = []
    for instruction in ["Name a colour.", "Add 2 and 3.", "Say hello."]:
        entry = {"instruction": instruction, "input": "", "output": "An answer."}
        ids = answerer.tokenizer.encode(format_prompt(entry))
        new = generate(answerer.model, ids, 8)[len(ids):]
        entries.append({**entry, "model_response": answerer.tokenizer.decode(new)})
    responses = tmp_path / "test_responses.json"
    responses.write_text(json.dumps(entries))
    out = tmp_path / "scores.json"
    rc = main(["evaluate", "judge", "--responses", str(responses), "--endpoint", server.url,
               "--api", "openai", "--model-name", model_dir.name, "--out", str(out),
               "--workers", "3", "--retries", "0"])
    assert rc == 0
    scores = json.loads(out.read_text())
    assert len(scores["items"]) == 3 and scores["n_scored"] + scores["n_unparsed"] == 3
    assert len(out.with_suffix(".jsonl").read_text().splitlines()) == 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_drains_the_running_stream_then_exits_cleanly(tmp_path):
    """The command runs here, in the main thread (where uvicorn takes signals); a client
    thread starts a long stream and sends this process SIGTERM while it runs."""
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel
    from scratchllm.tokenizers.gpt2 import GPT2Tokenizer
    from scratchllm.weights.model_dir import save_model_dir

    # GPT-2's 50,257 tokens: a random model all but never picks the end token, so the
    # stream is still running when the signal comes.
    model = tmp_path / "drained"
    save_model_dir(model, GPTModel(GPTConfig.preset("tiny", context_length=1024)),
                   GPT2Tokenizer())
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    seen: dict = {}

    def client() -> None:
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(url + "/health")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            body = {"prompt": "Once", "max_tokens": 500, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            auth = {"Authorization": "Bearer k3y"}
            with httpx.stream("POST", url + "/v1/completions", json=body, headers=auth,
                              timeout=60) as response:
                lines = response.iter_lines()
                seen["first"] = next(lines)
                seen["active"] = httpx.get(url + "/health").json()["active"]  # still running
                os.kill(os.getpid(), signal.SIGTERM)
                seen["signalled"] = True
                time.sleep(0.2)
                try:
                    httpx.get(url + "/health", timeout=2)
                    seen["refused"] = False
                except httpx.TransportError:
                    seen["refused"] = True  # no new connections while draining
                seen["rest"] = [line for line in lines if line]
        finally:
            if not seen.get("signalled"):  # never leave the server below running
                os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    rc = main(["serve", "--model", str(model), "--port", str(port), "--api-key", "k3y",
               "--max-batch", "2", "--drain-timeout", "30"])
    thread.join(30)
    assert rc == 0
    assert seen["first"].startswith("data: ") and seen["active"] == 1 and seen["refused"]
    rest = seen["rest"]
    assert rest[-1] == "data: [DONE]"
    usage = json.loads(rest[-2][len("data: "):])["usage"]
    reasons = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in rest[:-2]]
    assert usage["completion_tokens"] == 500 or reasons[-1] == "stop"
