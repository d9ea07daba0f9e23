"""RoPE against hand-computed rotations and Llama 3 frequency scaling against its formula."""

from __future__ import annotations

import math

import pytest
import torch

from scratchllm.errors import ConfigError
from scratchllm.model.rope import (
    apply_rope,
    compute_rope_frequencies,
    rope_inverse_frequencies,
    scale_llama3_frequencies,
)


def test_inverse_frequencies_are_base_powers():
    inv = rope_inverse_frequencies(8, 10_000.0)
    expected = [10_000.0 ** (-2 * i / 8) for i in range(4)]
    assert inv.tolist() == pytest.approx(expected, rel=1e-6)


def test_rotation_of_a_single_vector_by_hand():
    # head_dim 4, base 100: pair (x0, x2) turns at 1 rad/position, pair (x1, x3) at 0.1.
    cos, sin = compute_rope_frequencies(4, 100.0, context_length=8)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    out = apply_rope(x, cos, sin, position_ids=torch.tensor([2])).flatten().tolist()
    a, b = 2.0, 0.2
    expected = [1 * math.cos(a) - 3 * math.sin(a), 2 * math.cos(b) - 4 * math.sin(b),
                1 * math.sin(a) + 3 * math.cos(a), 2 * math.sin(b) + 4 * math.cos(b)]
    assert out == pytest.approx(expected, abs=1e-6)


def test_position_zero_is_identity_and_norm_is_kept():
    cos, sin = compute_rope_frequencies(16, 10_000.0, context_length=32)
    x = torch.randn(2, 3, 5, 16)
    pos = torch.tensor([0, 3, 7, 19, 31])
    out = apply_rope(x, cos, sin, pos)
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))


def test_scores_depend_only_on_relative_position():
    cos, sin = compute_rope_frequencies(16, 10_000.0, context_length=64)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> float:
        qm = apply_rope(q, cos, sin, torch.tensor([m]))
        kn = apply_rope(k, cos, sin, torch.tensor([n]))
        return float((qm * kn).sum())

    assert score(10, 4) == pytest.approx(score(30, 24), abs=1e-4)
    assert score(10, 4) != pytest.approx(score(10, 5), abs=1e-3)


def test_batched_position_ids_index_per_row():
    cos, sin = compute_rope_frequencies(8, 10_000.0, context_length=16)
    x = torch.randn(2, 2, 3, 8)
    pos = torch.tensor([[0, 1, 2], [5, 6, 7]])
    out = apply_rope(x, cos, sin, pos)
    torch.testing.assert_close(out[1:], apply_rope(x[1:], cos, sin, torch.tensor([5, 6, 7])))


def test_llama3_scaling_matches_the_formula_band_by_band():
    # head_dim 16, base 1e4, original context 64: wavelengths 2*pi*10^(i/2) for i in 0..7.
    inv = rope_inverse_frequencies(16, 10_000.0)
    scaled = scale_llama3_frequencies(inv, 8.0, 1.0, 4.0, 64).tolist()
    for i, theta in enumerate(inv.tolist()):
        wavelength = 2 * math.pi / theta
        if wavelength < 64 / 4:  # high frequency: untouched
            expected = theta
        elif wavelength > 64 / 1:  # low frequency: interpolated by the factor
            expected = theta / 8
        else:
            smooth = (64 / wavelength - 1) / (4 - 1)
            expected = (1 - smooth) * theta / 8 + smooth * theta
        assert scaled[i] == pytest.approx(expected, rel=1e-6), i
    assert scaled[0] == inv[0] and scaled[-1] == pytest.approx(float(inv[-1]) / 8)
    assert inv[1] / 8 < scaled[1] < inv[1]  # a blended band really exists here


def test_llama3_scaling_equals_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = transformers.LlamaConfig(
        hidden_size=128, num_attention_heads=4, max_position_embeddings=512,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
        rope_theta=500_000.0)
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, torch.device("cpu"))
    ours = scale_llama3_frequencies(rope_inverse_frequencies(32, 500_000.0), 32.0, 1.0, 4.0, 128)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_odd_head_dim_is_refused():
    with pytest.raises(ConfigError, match="even head_dim"):
        compute_rope_frequencies(7, 10_000.0, 8)
