"""Llama 3 and Qwen3 through the generic loader/exporter (adapters from weights/hf_llama.py)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("scratchllm.weights.hf_llama",
                    reason="the Llama/Qwen3 family (weights/hf_llama.py) is not installed")

from scratchllm.weights.hf import load_hf_dir  # noqa: E402
from scratchllm.weights.hf_export import export_hf_dir  # noqa: E402


def tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    return transformers.LlamaForCausalLM(config)


def tiny_qwen3():
    config = transformers.Qwen3Config(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    return transformers.Qwen3ForCausalLM(config)


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen3], ids=["llama", "qwen3"])
def test_load_and_export_round_trip(tmp_path, make):
    hf = make().eval()
    with torch.no_grad():  # move norms off 1.0 so a mix-up shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="200KB")
    model, _ = load_hf_dir(tmp_path / "hf")
    ids = torch.randint(0, 1000, (2, 24))
    with torch.no_grad():
        expected = hf(ids).logits
        assert (model(ids) - expected).abs().max().item() <= 1e-4
    out = export_hf_dir(model, tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(again) is type(hf)
    with torch.no_grad():
        assert (again(ids).logits - expected).abs().max().item() <= 1e-4
