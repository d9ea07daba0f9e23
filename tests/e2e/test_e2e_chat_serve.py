"""``scratchllm chat`` with piped messages and ``scratchllm serve`` answered over HTTP.

Both are checked against ``transformers``: the chat reply is its greedy continuation of the
chat template applied to the message, the served completion its greedy continuation of the
prompt.
"""

from __future__ import annotations

import signal

import pytest
import torch

from e2e_support import PROMPT, hf_greedy, start_serve

pytestmark = pytest.mark.slow


def _hf_chat_reply(directory, message: str, new: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    text = tok.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                   add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new, pad_token_id=eos[0])
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_chat_answers_piped_messages_in_the_models_template(cli, llama_hf_dir):
    proc = cli(["chat", "--model", llama_hf_dir, "--max-new-tokens", "8"],
               stdin="Hello there\n/quit\n")
    reply = _hf_chat_reply(llama_hf_dir, "Hello there", 8)
    assert reply.strip() and proc.stdout.strip() == reply.strip()


def test_readme_chat_flags_system_and_sampling(cli, llama_hf_dir):
    """README: ``chat --system "Be brief." --temperature 0.7 --top-p 0.9``. Greedy with a
    system message answers as transformers does on the same template; sampling with a seed
    repeats."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    proc = cli(["chat", "--model", llama_hf_dir, "--system", "Be brief.", "--temperature", "0",
                "--max-new-tokens", "8"], stdin="Hello there\n/quit\n")
    tok = AutoTokenizer.from_pretrained(llama_hf_dir)
    model = AutoModelForCausalLM.from_pretrained(llama_hf_dir).eval()
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Hello there"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=8, pad_token_id=eos[0])
    reply = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert reply.strip() and proc.stdout.strip() == reply.strip()
    sampled = ["chat", "--model", llama_hf_dir, "--system", "Be brief.", "--temperature", "0.7",
               "--top-p", "0.9", "--seed", "3", "--max-new-tokens", "8"]
    first = cli(sampled, stdin="Hello there\n/quit\n").stdout
    assert first.strip() and first == cli(sampled, stdin="Hello there\n/quit\n").stdout


def test_serve_completes_like_transformers_and_stops_on_sigterm(cli_runner, gpt2_hf_dir):
    import httpx

    server, base = start_serve(cli_runner, ["--model", gpt2_hf_dir, "--max-batch", "2",
                                            "--model-name", "tiny"])
    try:
        answer = httpx.post(f"{base}/v1/completions", trust_env=False, timeout=60, json={
            "model": "tiny", "prompt": PROMPT, "max_tokens": 12, "temperature": 0}).json()
        models = httpx.get(f"{base}/v1/models", trust_env=False, timeout=10).json()
    finally:
        cli_runner.signal(server, signal.SIGTERM)
        done = cli_runner.finish(server, timeout=60)
    assert answer["choices"][0]["text"] == hf_greedy(gpt2_hf_dir, PROMPT, 12)[len(PROMPT):]
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert done.returncode in (0, 128 + signal.SIGTERM), done.stderr
    assert "Traceback" not in done.stderr
