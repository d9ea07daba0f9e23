"""README's decoding flags as typed: ``--quantize int8`` and ``--dtype bf16`` for generate,
chat and serve, and ``generate --stats``. The int8 reference is the library's own int8 model
(``open_model(..., quantize="int8")``): the commands must print exactly what it generates.
The bf16 reference is plain bf16 (PyTorch's ``F.linear``), which the commands' prepacked
layers (``scratchllm.model.cpu_linear``) must reproduce token for token."""

from __future__ import annotations

import signal

import pytest

from e2e_support import PROMPT, generated, start_serve

pytestmark = pytest.mark.slow

NEW = 12


def _int8(directory):
    from scratchllm.weights.auto import open_model

    return open_model(directory, quantize="int8", require_tokenizer=True)


def _int8_text(directory, prompt: str, new: int) -> str:
    from scratchllm.generate import generate

    loaded = _int8(directory)
    ids = loaded.tokenizer.encode_prompt(prompt, allowed_special="all")
    out = generate(loaded.model, ids, new, eos_id=list(loaded.eos_ids))
    return loaded.tokenizer.decode(out[len(ids):])


def test_generate_quantize_int8_with_stats(cli, gpt2_hf_dir):
    """README: ``generate --quantize int8 --stats``: GPT-2's tied head is int8 too; the text
    is the library's int8 continuation and the timings go to stderr."""
    proc = cli(["generate", "--model", gpt2_hf_dir, "--quantize", "int8", "--stats",
                "--max-new-tokens", NEW, PROMPT])
    assert generated(proc) == PROMPT + _int8_text(gpt2_hf_dir, PROMPT, NEW)
    stats = dict(line.split(":", 1) for line in proc.stderr.strip().splitlines()[-7:])
    assert {"prompt tokens", "time to first token", "decode rate"} <= set(stats), proc.stderr
    assert float(stats["decode rate"].split()[0]) > 0


def test_chat_quantize_int8(cli, llama_hf_dir):
    from scratchllm.chat import ChatSession, Sampling, choose_format

    proc = cli(["chat", "--model", llama_hf_dir, "--quantize", "int8", "--max-new-tokens", 8],
               stdin="Hello there\n/quit\n")
    loaded = _int8(llama_hf_dir)
    session = ChatSession(loaded.model, loaded.tokenizer, choose_format(loaded.tokenizer),
                          eos_ids=loaded.eos_ids, sampling=Sampling(8))
    reply = "".join(session.ask("Hello there"))
    assert reply.strip() and proc.stdout.strip() == reply.strip()


def _served_text(cli_runner, model_dir, flags: list) -> str:
    """Start ``scratchllm serve`` with one slot and ``flags``; the greedy completion of PROMPT."""
    import httpx

    server, base = start_serve(cli_runner, ["--model", model_dir, *flags,
                                            "--max-batch", 1, "--model-name", "tiny"])
    try:
        answer = httpx.post(f"{base}/v1/completions", trust_env=False, timeout=60, json={
            "model": "tiny", "prompt": PROMPT, "max_tokens": NEW, "temperature": 0}).json()
    finally:
        cli_runner.signal(server, signal.SIGTERM)
        done = cli_runner.finish(server, timeout=60)
    assert "Traceback" not in done.stderr
    return answer["choices"][0]["text"]


def test_serve_quantize_int8(cli_runner, gpt2_hf_dir):
    """One slot (--max-batch 1): the served text equals the library's batch-of-one int8
    continuation."""
    assert _served_text(cli_runner, gpt2_hf_dir, ["--quantize", "int8"]) == \
        _int8_text(gpt2_hf_dir, PROMPT, NEW)


def test_quantize_with_bf16_is_one_line(cli_error, gpt2_hf_dir):
    line = cli_error(["generate", "--model", gpt2_hf_dir, "--quantize", "int8", "--dtype",
                      "bf16", "--device", "cpu", PROMPT], "generate")
    assert "--quantize int8" in line and "drop --dtype" in line


def _bf16_reference(directory, prompt: str, new: int, *, linear_kinds: str) -> str:
    """Plain bf16 (PyTorch's own bf16 ``F.linear``, nothing prepacked): the text the
    prepacked layers of ``--dtype bf16`` must reproduce."""
    from scratchllm.generate import generate
    from scratchllm.model.cpu_linear import describe_linears
    from scratchllm.weights.auto import open_model

    loaded = open_model(directory, dtype="bfloat16", require_tokenizer=True)
    assert describe_linears(loaded.model).endswith(linear_kinds)
    ids = loaded.tokenizer.encode_prompt(prompt, allowed_special="all")
    out = generate(loaded.model, ids, new, eos_id=list(loaded.eos_ids))
    return loaded.tokenizer.decode(out[len(ids):])


def _bf16_layers_expected() -> str:
    """What ``--stats`` should report for bf16 here: prepacked where this CPU and PyTorch
    allow it (scratchllm.model.cpu_linear), else plain bf16 with a note."""
    import torch

    from scratchllm.model.cpu_linear import packed_unavailable

    packed = packed_unavailable(torch.bfloat16) is None
    return "bfloat16, prepacked for oneDNN" if packed else "bfloat16"


def test_generate_bf16_with_stats(cli, gpt2_hf_dir):
    """README: ``generate --dtype bf16 --stats``: GPT-2's tied head is prepacked too, the text
    is plain bf16's and the stats say what the linear layers ran on."""
    proc = cli(["generate", "--model", gpt2_hf_dir, "--dtype", "bf16", "--stats",
                "--max-new-tokens", NEW, PROMPT])
    assert generated(proc) == PROMPT + _bf16_reference(gpt2_hf_dir, PROMPT, NEW,
                                                       linear_kinds="bfloat16")
    stats = dict(line.split(":", 1) for line in proc.stderr.strip().splitlines()[-8:])
    assert stats["linear layers"].strip().endswith(_bf16_layers_expected()), proc.stderr
    assert float(stats["decode rate"].split()[0]) > 0


def test_chat_bf16_qwen3(cli, qwen3_hf_dir):
    from scratchllm.chat import ChatSession, Sampling, choose_format
    from scratchllm.weights.auto import open_model

    proc = cli(["chat", "--model", qwen3_hf_dir, "--dtype", "bf16", "--max-new-tokens", 8],
               stdin="Hello there\n/quit\n")
    loaded = open_model(qwen3_hf_dir, dtype="bfloat16", require_tokenizer=True)  # plain bf16
    session = ChatSession(loaded.model, loaded.tokenizer, choose_format(loaded.tokenizer),
                          eos_ids=loaded.eos_ids, sampling=Sampling(8))
    reply = "".join(session.ask("Hello there"))
    assert reply.strip() and proc.stdout.strip() == reply.strip()


def test_serve_bf16(cli_runner, gpt2_hf_dir):
    """``serve --dtype bf16`` opens the model inference-only too: the served text (one slot)
    is plain bf16's library continuation."""
    assert _served_text(cli_runner, gpt2_hf_dir, ["--dtype", "bf16"]) == \
        _bf16_reference(gpt2_hf_dir, PROMPT, NEW, linear_kinds="bfloat16")
