"""llama.cpp itself (``llama-cpp-python``) runs the GGUF export: same tokens, same logits.

llama-cpp-python builds llama.cpp from source (minutes on 2 cores), so it is not part of the
test install; these tests skip without it. ``benchmarks/gguf_parity.py`` runs the same checks
on bigger models and times llama.cpp beside scratchllm.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")
llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python; it "
    "compiles llama.cpp, ~5+ minutes on 2 cores)")

from gguf_support import (LLAMA3_TEMPLATE, LLAMA_SPECIALS, hf_tokenizer,  # noqa: E402
                          loaded_model, tiny_gpt, tiny_llama)

from scratchllm.generate import generate  # noqa: E402
from scratchllm.export.gguf import export_gguf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = "What is the capital of France? Paris is the capital."
NEW = 12


def _llama(path, n_ctx=64):
    """f32 keys and values in the KV cache: llama.cpp's default f16 cache alone moves logits
    by ~1e-3."""
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=1, n_threads_batch=1,
                           n_batch=n_ctx, logits_all=True, verbose=False,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def _scaled(model):
    """Weights scaled down (norms kept): logits of about one unit. (llama.cpp computes GELU
    from a float16 table, which alone moves a GPT-2's logits by ~3e-4 at this size and ~1e-3
    at three times it; Llama and Qwen3 agree to ~1e-6.)"""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(0.1)
    return model


def _parity(tmp_path, loaded, tolerance=1e-3):
    tok = loaded.tokenizer
    prompt = tok.encode_prompt(TEXT)
    with torch.no_grad():
        ours = generate(loaded.model, torch.tensor([prompt]), NEW)[0].tolist()
        our_logits = loaded.model(torch.tensor([ours]))[0].numpy()
    path = export_gguf(loaded, tmp_path / "m.gguf", type_name="f32")
    llm = _llama(path)
    assert llm.tokenize(TEXT.encode(), add_bos=True, special=False) == prompt
    llm.reset()
    theirs = [int(t) for _, t in zip(range(NEW), llm.generate(prompt, temp=0.0, top_k=1))]
    assert prompt + theirs == ours
    llm.reset()
    llm.eval(ours)
    diff = np.abs(np.asarray(llm.scores[:len(ours)]) - our_logits).max()
    assert diff <= tolerance, f"max logit difference {diff:.2e}"


def test_gpt2_runs_in_llama_cpp_like_in_scratchllm(tmp_path):
    tok = hf_tokenizer()
    _parity(tmp_path, loaded_model(_scaled(tiny_gpt(tok.vocab_size, qkv_bias=True)), tok))


def test_llama3_runs_in_llama_cpp_like_in_scratchllm(tmp_path):
    tok = hf_tokenizer(LLAMA_SPECIALS, bos="<|begin_of_text|>", eos="<|end_of_text|>",
                       template=LLAMA3_TEMPLATE)
    _parity(tmp_path, loaded_model(_scaled(tiny_llama(tok.vocab_size)), tok), tolerance=1e-5)


def test_qwen3_runs_in_llama_cpp_like_in_scratchllm(tmp_path):
    tok = hf_tokenizer()
    _parity(tmp_path, loaded_model(_scaled(tiny_llama(tok.vocab_size, qwen3=True)), tok),
            tolerance=1e-5)
