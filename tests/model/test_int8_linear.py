"""The int8 linear layer (``scratchllm.model.int8_linear``): per-row activation scales checked
against a hand-written quantize/dequantize reference, rows independent of their batch, and the
8-bit activations the VNNI kernel allows checked at the codes' extremes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.model.int8_linear import Int8Linear, swap_linears

pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(in_features: int = 96, out_features: int = 80, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=bias)


def _reference(q: Int8Linear, layer: nn.Linear, x: torch.Tensor, bits: int) -> torch.Tensor:
    """Each input row rounded to whole multiples of its own peak / 127 (peak / 63 with 7
    bits), times the layer's int8 weights (checked against the float ones below)."""
    w = layer.weight.detach().double()
    w_hat = q.dequantized_weight().double()
    row_step = w.abs().amax(dim=1, keepdim=True) / 127.5  # codes -128..127 over +-peak
    assert ((w_hat - w).abs() <= row_step / 2 + 1e-7).all()
    assert torch.allclose(w_hat / row_step, (w_hat / row_step).round(), atol=1e-4)
    top = 2 ** (bits - 1) - 1
    step = x.double().abs().amax(dim=1, keepdim=True) / top
    x_hat = (x.double() / step).round() * step
    out = x_hat @ w_hat.T
    return out if layer.bias is None else out + layer.bias.detach().double()


@pytest.mark.parametrize("bits", [8, 7])
def test_output_is_the_per_row_int8_product(bits):
    """Both paths (several rows: each divided by its peak; one row: the anchors scaled
    instead) compute the per-row int8 product of the hand-written reference."""
    layer = _layer()
    x = torch.randn(6, 96) * torch.tensor([1e-3, 0.1, 1.0, 10.0, 300.0, 1.0])[:, None]
    q = Int8Linear(layer, reduce_range=(bits == 7))
    ref = _reference(q, layer, x, bits)
    scale = ref.abs().amax(dim=1, keepdim=True)
    exact = F.linear(x, layer.weight, layer.bias).double()
    for out in (q(x).double(), torch.cat([q(row[None]) for row in x]).double()):
        # float rounding of the kernel's scale can move a code sitting on a rounding tie by
        # one step: far below the quantization error itself (the second assertion)
        off = ((out - ref).abs() / scale).max()
        assert off < 2e-3
        assert ((out - exact).abs() / scale).max() > 2 * off  # the reference explains it
    assert q.extra_repr().endswith(f"activation_bits={bits}")


def test_each_row_has_its_own_scale():
    """A token 1000x louder than another in the same input does not coarsen the quiet one's
    rounding: its relative error is as small as when it is alone (one scale per tensor, as
    PyTorch's dynamic int8 uses, would round it on the loud token's grid)."""
    layer = _layer(bias=False)
    q = Int8Linear(layer)
    quiet, loud = torch.randn(1, 96), 1000 * torch.randn(1, 96)
    together = q(torch.cat([quiet, loud]))
    exact = F.linear(quiet, layer.weight)
    relative = ((together[0] - exact[0]).norm() / exact.norm()).item()
    assert relative < 0.02
    assert torch.allclose(together[0], q(quiet)[0], rtol=0, atol=1e-3 * exact.abs().max().item())
    # one scale for both rows would round every quiet entry to 0 (less than half its step)
    assert (loud.max() - loud.min()) / 255 > 2 * quiet.abs().max()


def test_rows_are_independent_of_their_batch():
    """Any batch of two or more rows: a row's output is bit for bit the same whatever the
    other rows are; alone, within float rounding of the kernel's scale."""
    q = Int8Linear(_layer())
    torch.manual_seed(1)
    batch = torch.randn(5, 3, 96) * torch.tensor([0.01, 1.0, 50.0, 1.0, 3.0])[:, None, None]
    batch[3, 1] = 0.0  # an all-zero row stays finite
    together = q(batch)
    assert together.shape == (5, 3, 80) and torch.isfinite(together).all()
    assert torch.equal(together[3, 1], q.bias)
    flat, out = batch.reshape(15, 96), together.reshape(15, 80)
    quiet = torch.tensor([0, 1, 2])  # the 0.01-scaled prompt's rows
    for other in range(3, 15):  # beside one very different row each time
        pair = q(flat[torch.cat([quiet, torch.tensor([other])])])
        assert torch.equal(pair[:3], out[:3]) and torch.equal(pair[3], out[other])
    alone = torch.cat([q(row[None]) for row in flat])
    size = out.abs().amax(dim=1, keepdim=True)
    assert ((alone - out).abs() <= 1e-3 * size).all()
    assert ((alone - out).abs() <= 1e-5 * size).float().mean() > 0.9  # most to float rounding


@pytest.mark.skipif(not torch.cpu._is_vnni_supported(), reason="8-bit activations need VNNI")
def test_eight_bit_activations_do_not_saturate_with_vnni():
    """All codes at their extremes (activation 255, weight 127): without VNNI the kernel's
    16-bit pairwise sums would overflow; with it the result is exact to the last code."""
    layer = _layer(512, 4, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.weight[1] = -1.0
    q = Int8Linear(layer)
    assert not q.reduce_range
    out = q(torch.ones(1, 512))[0]  # activation 1 is code 255 (zero point 128, step 1/127)
    expected = q.dequantized_weight().sum(dim=1)
    assert expected[0] > 500 and expected[1] < -500  # weight codes at +-127 / -128
    assert torch.allclose(out, expected, rtol=1e-5)  # a saturated sum would be off by ~half


def test_swap_linears_replaces_plain_linears_only():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))
    assert swap_linears(model) == 2
    assert isinstance(model[0], Int8Linear) and isinstance(model[2][0], Int8Linear)
    w = model[2][0].dequantized_weight()
    assert w.shape == (4, 8)
