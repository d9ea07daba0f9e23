"""Teaching GELU and LayerNorm (book 4.2-4.3) equal the fast layers and PyTorch's references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scratchllm.model.layers import GELU, LayerNorm
from scratchllm.model.teaching import TeachingGELU, TeachingLayerNorm


def test_gelu_hand_computed_values():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0])
    # 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))), evaluated in plain Python floats.
    expected = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
                for v in x.tolist()]
    torch.testing.assert_close(TeachingGELU()(x), torch.tensor(expected))
    assert TeachingGELU()(torch.tensor(1.0)).item() == pytest.approx(0.8412, abs=1e-4)


def test_gelu_equals_fast_gelu_and_torch_reference():
    x = torch.linspace(-6, 6, 1001)
    ours = TeachingGELU()(x)
    torch.testing.assert_close(ours, GELU()(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, F.gelu(x, approximate="tanh"), atol=1e-6, rtol=0)
    # The tanh form approximates the exact erf GELU to within ~1e-3.
    assert (ours - F.gelu(x)).abs().max() < 1e-3
    assert (ours - F.gelu(x)).abs().max() > 1e-5  # ...but it is a different function


def test_layer_norm_normalizes_book_4_2_example():
    torch.manual_seed(123)
    batch = torch.randn(2, 5)
    out = TeachingLayerNorm(5)(batch)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)


def test_layer_norm_equals_fast_and_torch_layer_norm():
    x = torch.randn(3, 7, 16) * 4 + 2
    teaching, fast, reference = TeachingLayerNorm(16), LayerNorm(16), torch.nn.LayerNorm(16)
    scale, shift = torch.randn(16), torch.randn(16)
    with torch.no_grad():
        teaching.scale.copy_(scale)
        teaching.shift.copy_(shift)
        for m in (fast, reference):
            m.weight.copy_(scale)
            m.bias.copy_(shift)
    torch.testing.assert_close(teaching(x), fast(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(teaching(x), reference(x), atol=1e-5, rtol=1e-5)


def test_layer_norm_constant_input_is_finite():
    """Zero variance: eps keeps the division finite, output is just the shift."""
    norm = TeachingLayerNorm(4)
    out = norm(torch.full((2, 4), 3.0))
    torch.testing.assert_close(out, torch.zeros(2, 4))
