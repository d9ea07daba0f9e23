"""README's ``generate --compile``: the compiled decode step prints exactly what the eager
library generates (int8 here, the path with the opaque int8 operator inside the graph), the
compile time goes to ``--stats``, and a flag combination it cannot serve is one error line."""

from __future__ import annotations

from e2e_support import PROMPT, generated

NEW = 12


def _int8_text(directory, prompt: str, new: int) -> str:
    from scratchllm.generate import generate
    from scratchllm.weights.auto import open_model

    loaded = open_model(directory, quantize="int8", require_tokenizer=True,
                        inference_only=True)
    ids = loaded.tokenizer.encode_prompt(prompt, allowed_special="all")
    out = generate(loaded.model, ids, new, eos_id=list(loaded.eos_ids))
    return loaded.tokenizer.decode(out[len(ids):])


def test_generate_compile_int8_matches_eager(cli, gpt2_hf_dir):
    proc = cli(["generate", "--model", gpt2_hf_dir, "--quantize", "int8", "--compile",
                "--stats", "--max-new-tokens", NEW, PROMPT])
    assert generated(proc) == PROMPT + _int8_text(gpt2_hf_dir, PROMPT, NEW)
    stats = dict(line.split(":", 1) for line in proc.stderr.strip().splitlines()
                 if ":" in line)
    assert float(stats["compile time"].split()[0]) > 0, proc.stderr


def test_compile_without_the_cache_is_one_error_line(cli_error, gpt2_hf_dir):
    line = cli_error(["generate", "--model", gpt2_hf_dir, "--compile", "--no-cache", PROMPT],
                     "generate")
    assert "--no-cache" in line and "--compile" in line


def test_chat_compile_answers_as_the_eager_session(cli, llama_hf_dir):
    """``chat --compile`` (a Llama-family model, fp32: inductor's own matmuls in the graph)
    answers exactly what an eager ChatSession answers."""
    from scratchllm.chat import ChatSession, Sampling, choose_format
    from scratchllm.weights.auto import open_model

    proc = cli(["chat", "--model", llama_hf_dir, "--compile", "--max-new-tokens", 8],
               stdin="Hello there\n/quit\n")
    loaded = open_model(llama_hf_dir, require_tokenizer=True, inference_only=True)
    session = ChatSession(loaded.model, loaded.tokenizer, choose_format(loaded.tokenizer),
                          eos_ids=loaded.eos_ids, sampling=Sampling(8))
    reply = "".join(session.ask("Hello there"))
    assert reply.strip() and proc.stdout.strip() == reply.strip()
    assert "Traceback" not in proc.stderr
