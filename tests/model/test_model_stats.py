"""Analytic parameter counts, memory and FLOPs (book 4.6) against real models and hand math."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scratchllm.errors import ConfigError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.stats import (
    count_parameters,
    flops_per_token,
    model_memory_bytes,
    parameter_counts,
    training_flops_per_token,
)
from scratchllm.model.teaching import WeightSplitMultiHeadAttention


def _real_count(config: GPTConfig) -> int:
    """sum(p.numel()) of an actual GPTModel, built on the meta device (shapes, no memory)."""
    with torch.device("meta"):
        model = GPTModel(config)
    return sum(p.numel() for p in model.parameters())


def test_book_4_6_parameter_counts():
    small = GPTConfig.preset("gpt2-small")
    assert count_parameters(small) == 163_009_536
    assert count_parameters(small, tied=True) == 124_412_160
    assert count_parameters(GPTConfig.preset("gpt2-small", tie_weights=True)) == 124_412_160


def test_book_4_6_memory():
    small = GPTConfig.preset("gpt2-small")
    assert model_memory_bytes(small, torch.float32) == 163_009_536 * 4
    assert round(model_memory_bytes(small, torch.float32) / 1024**2, 2) == 621.83
    assert model_memory_bytes(small, "bf16") == 163_009_536 * 2
    with pytest.raises(ConfigError, match="unknown dtype"):
        model_memory_bytes(small, "float7")


@pytest.mark.parametrize("preset, params, megabytes", [
    ("gpt2-medium", 406_212_608, 1549.58),
    ("gpt2-large", 838_220_800, 3197.56),
    ("gpt2-xl", 1_637_792_000, 6247.68),
])
def test_book_exercise_4_3_larger_models(preset, params, megabytes):
    config = GPTConfig.preset(preset)
    assert count_parameters(config) == params
    assert round(model_memory_bytes(config) / 1024**2, 2) == megabytes


@pytest.mark.parametrize("preset", ["tiny", "gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_analytic_count_equals_real_model(preset, tied, qkv_bias):
    config = GPTConfig.preset(preset, tie_weights=tied, qkv_bias=qkv_bias)
    assert count_parameters(config) == _real_count(config)


def test_counts_on_materialized_models():
    """Real (not meta) tiny models, counted through the nn.Module path."""
    untied = GPTModel(GPTConfig.preset("tiny"))
    tied = GPTModel(GPTConfig.preset("tiny", tie_weights=True))
    assert count_parameters(untied) == sum(p.numel() for p in untied.parameters())
    assert count_parameters(tied) == count_parameters(tied.config)
    assert count_parameters(untied, tied=True) == count_parameters(tied)
    assert count_parameters(tied, tied=False) == count_parameters(untied)
    assert model_memory_bytes(tied, "float16") == 2 * count_parameters(tied)


def test_parameter_breakdown_gpt2_small():
    counts = parameter_counts(GPTConfig.preset("gpt2-small"))
    assert counts.token_embedding == 50257 * 768
    assert counts.position_embedding == 1024 * 768
    assert counts.blocks == 12 * 7_085_568  # 12 E^2 weights + 10 E biases/norms per block
    assert counts.embedding + counts.non_embedding == counts.total == 163_009_536


def test_flops_gpt2_small_by_hand():
    config = GPTConfig.preset("gpt2-small")
    n = 12 * 7_085_568 + 2 * 768 + 50257 * 768  # blocks + final norm + output head
    assert flops_per_token(config) == 2 * n + 2 * 12 * 1024 * 768
    assert flops_per_token(config, seq_len=1) == 2 * n + 2 * 12 * 768
    assert training_flops_per_token(config) == 3 * flops_per_token(config)
    # The head multiply is work whether or not its matrix is shared.
    assert flops_per_token(GPTConfig.preset("gpt2-small", tie_weights=True)) == flops_per_token(config)


def test_flops_match_torch_flop_counter():
    """PyTorch's FlopCounterMode counts every matmul of a real forward pass; our formula adds
    only the causal attention term and the (2 FLOPs per) biases and norm weights."""
    config = GPTConfig.preset("tiny", vocab_size=500, context_length=32)
    model = GPTModel(config).eval()
    seq_len = 32
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, 500, (1, seq_len)))
    e, layers = config.emb_dim, config.n_layers
    small_params = layers * (4 * e + e + 4 * e + e) + 2 * e  # norms + biases
    attention = 2 * layers * seq_len * e
    counted_matmuls = counter.get_total_flops() / seq_len  # CPU SDPA is not counted
    assert flops_per_token(config, seq_len) == counted_matmuls + 2 * small_params + attention


def test_attention_term_is_half_the_dense_score_and_value_matmuls():
    """The teaching attention does q@k^T and w@v densely (masked, not skipped); a causal
    token uses half of that on average, which is the 2 * seq_len * emb_dim per layer."""
    seq_len, e = 16, 32
    mha = WeightSplitMultiHeadAttention(e, e, seq_len, 0.0, num_heads=4)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        mha(torch.randn(1, seq_len, e))
    projections = 2 * seq_len * (4 * e * e)  # q, k, v, out_proj
    dense_attention = counter.get_total_flops() - projections
    config = GPTConfig(vocab_size=10, context_length=4 * seq_len, emb_dim=e, n_heads=4,
                       n_layers=1)
    # The parameter part does not depend on seq_len, and the attention part grows linearly,
    # so doubling seq_len adds exactly the attention term of seq_len.
    attention_term = flops_per_token(config, 2 * seq_len) - flops_per_token(config, seq_len)
    assert attention_term == dense_attention / 2 / seq_len


def test_bad_arguments():
    with pytest.raises(ConfigError, match="seq_len"):
        flops_per_token(GPTConfig.preset("tiny"), seq_len=0)
    with pytest.raises(ConfigError, match="GPTConfig or an nn.Module"):
        count_parameters({"emb_dim": 768})
    with pytest.raises(ConfigError, match="out_head and tok_emb"):
        count_parameters(torch.nn.Linear(2, 2), tied=True)
