"""Helpers shared by the end-to-end tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import torch

ASSET = Path(__file__).resolve().parents[2] / "src" / "scratchllm" / "assets" / "the-verdict.txt"
BPE_VOCAB = 300                # byte alphabet (256) + specials + a few dozen merges
WIDTH, LAYERS, CONTEXT = 32, 2, 256
PROMPT = "Every effort moves you"
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"]
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
HUB_REPO = "e2e-owner/tiny-gpt2"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def corpus_text() -> str:
    """A page of the bundled story: training text for the BPEs and the pretraining run."""
    return ASSET.read_text(encoding="utf-8")[:6000]


def generated(proc: subprocess.CompletedProcess) -> str:
    """What ``scratchllm generate`` printed: the prompt and its continuation (no newline)."""
    assert proc.stdout.endswith("\n"), proc.stdout
    return proc.stdout[:-1]


@functools.lru_cache(maxsize=None)
def hf_greedy(directory: Path, prompt: str, max_new_tokens: int) -> str:
    """``transformers``' greedy continuation of ``prompt``, decoded, prompt in front."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=min(eos, default=0))
    new = out[0, ids.shape[1]:].tolist()
    if new and new[-1] in eos:
        new = new[:-1]  # scratchllm stops at an end id without printing it
    return prompt + tok.decode(new, skip_special_tokens=False)


def copy_run(run: Path, where: Path) -> Path:
    """A private copy of the session's run for a test that changes it."""
    return Path(shutil.copytree(run, where, symlinks=True))


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path: proof nothing changed."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(base: str, seconds: float, why, alive=lambda: True) -> None:
    """Poll ``base``/health until it answers 200; fail with ``why()`` (the server's output)
    once ``seconds`` pass or ``alive()`` turns false."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while True:
        assert alive(), why()
        try:
            if httpx.get(f"{base}/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, why()
        time.sleep(0.2)


def start_serve(cli_runner, argv: list) -> tuple[tuple, str]:
    """``scratchllm serve ARGV --port P`` started and answering /health; (started, base URL).
    The caller stops it (``cli_runner.signal(started, SIGTERM)`` or ``finish``)."""
    port = free_port()
    server = cli_runner.start(["serve", *argv, "--port", port])
    base = f"http://127.0.0.1:{port}"
    wait_for_health(base, 120, lambda: cli_runner.finish(server, timeout=1).stderr)
    return server, base


def ended(started: tuple) -> bool:
    """Whether a command ``cli_runner.start`` began has exited."""
    import os

    proc = started[1]
    if isinstance(proc, subprocess.Popen):  # SCRATCHLLM_E2E_SPAWN=1
        return proc.poll() is not None
    try:
        os.kill(proc, 0)  # a child of the e2e zygote, reaped as soon as it exits
    except ProcessLookupError:
        return True
    return Path(started[2]["rc"]).exists()


def wait_for_moment(condition, started, cli_runner, seconds: float = 60) -> None:
    """Poll ``condition`` every 2 ms (the moment to signal a running command); fail at once
    if the command ended first (it was too fast to be caught mid-way)."""
    import time

    import pytest

    deadline = time.monotonic() + seconds
    while not condition():
        if ended(started) or time.monotonic() > deadline:
            pytest.fail("the moment to signal never came:\n"
                        + cli_runner.finish(started, timeout=10).stderr)
        time.sleep(0.002)
