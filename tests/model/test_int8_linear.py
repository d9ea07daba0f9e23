"""The int8 linear layer (``scratchllm.model.int8_linear``): per-row activation scales checked
against hand-written quantize/dequantize references (several rows: symmetric on each row's
peak; one row: the kernel's own [min, max] grid), rows independent of their batch, and the
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


def _reference_alone(q: Int8Linear, layer: nn.Linear, x: torch.Tensor, bits: int) -> torch.Tensor:
    """One row on its own asymmetric grid: 2**bits - 1 steps over [min(x, 0), max(x, 0)],
    zero on a whole code (the rule of PyTorch's dynamic quantization), times the int8 weights."""
    x = x.double()
    top = 2 ** bits - 1
    low = x.amin(dim=1, keepdim=True).clamp(max=0)
    step = (x.amax(dim=1, keepdim=True).clamp(min=0) - low) / top
    zero = (-low / step).round().clamp(0, top)
    x_hat = ((x / step).round() + zero).clamp(0, top).sub(zero) * step
    out = x_hat @ q.dequantized_weight().double().T
    return out if layer.bias is None else out + layer.bias.detach().double()


@pytest.mark.parametrize("bits", [8, 7])
def test_output_is_the_per_row_int8_product(bits):
    """Several rows (each divided by its peak, anchor row pinning the grid) compute the
    symmetric per-row reference; one row alone goes straight to the kernel and computes the
    asymmetric per-row one: both hand-written."""
    layer = _layer()
    x = torch.randn(6, 96) * torch.tensor([1e-3, 0.1, 1.0, 10.0, 300.0, 1.0])[:, None]
    x[5] = x[5].abs() + 0.5  # all positive: the alone grid starts at 0, not at the row's min
    q = Int8Linear(layer, reduce_range=(bits == 7))
    exact = F.linear(x, layer.weight, layer.bias).double()
    alone = torch.cat([q(row[None]) for row in x]).double()
    assert torch.equal(alone, torch.cat([q(row.view(1, 1, 96))[0] for row in x]).double())
    for out, ref in ((q(x).double(), _reference(q, layer, x, bits)),
                     (alone, _reference_alone(q, layer, x, bits))):
        scale = ref.abs().amax(dim=1, keepdim=True)
        # float rounding of the kernel's scale can move a code sitting on a rounding tie by
        # one step: far below the quantization error itself (the second assertion)
        off = ((out - ref).abs() / scale).max()
        assert off < 2e-3
        assert ((out - exact).abs() / scale).max() > 2 * off  # the reference explains it
    # the two grids are different roundings of the same row: equally close to the exact product
    err = {name: ((out - exact).norm(dim=1) / exact.norm(dim=1)).max().item()
           for name, out in (("batch", q(x).double()), ("alone", alone))}
    assert err["alone"] < 0.03 * 2 ** (8 - bits) and err["batch"] < 0.03 * 2 ** (8 - bits)
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
    for out in (together[0], q(quiet)[0]):  # in the batch, and alone
        assert ((out - exact[0]).norm() / exact.norm()).item() < 0.02
    # one scale for both rows would round every quiet entry to 0 (less than half its step)
    assert (loud.max() - loud.min()) / 255 > 2 * quiet.abs().max()


def test_rows_are_independent_of_their_batch():
    """Any batch of two or more rows: a row's output is bit for bit the same whatever the
    other rows are; alone (its own asymmetric grid), as close to the exact product."""
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
    exact = F.linear(flat, q.dequantized_weight(), q.bias)
    alone = torch.cat([q(row[None]) for row in flat])
    size = exact.norm(dim=1).clamp_min(1e-6)
    for rows in (out, alone):
        assert ((rows - exact).norm(dim=1) / size).max() < 0.02
    assert not torch.equal(alone, out)  # a different grid: the last bits differ


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


def test_one_input_feature_gets_two_anchor_rows():
    """With one input feature the anchors cannot share a row: two rows pin the grid, and a
    batch still computes each row's exact int8 product (one feature, peak-scaled: exact)."""
    layer = _layer(1, 4)
    q = Int8Linear(layer)
    x = torch.tensor([[0.5], [-3.0], [0.0], [200.0]])
    assert len(q.anchor_rows) == 2
    expected = F.linear(x, q.dequantized_weight(), q.bias)
    assert torch.allclose(q(x), expected, rtol=1e-5, atol=1e-5)


def test_kernel_is_called_without_the_torch_function_scan():
    """The packed weights are a ``torch.ScriptObject``, on which PyTorch's ``__torch_function__``
    scan of an op's arguments costs a failed attribute lookup (most of a decode row's call), so
    the layer calls fbgemm with the scan off: a ``TorchFunctionMode`` sees a plain call of the op
    but not the layer's, and the layer's output is the op's own, bit for bit, for one row and
    for several."""
    from torch.overrides import TorchFunctionMode

    op = torch.ops.quantized.linear_dynamic.default
    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    q = Int8Linear(_layer())
    row, rows = torch.randn(1, 1, 96), torch.randn(4, 96)
    with Record():
        op(row, q._packed, q.reduce_range)
    assert seen == [op]  # the mode would see the kernel if the scan ran
    seen.clear()
    with Record():
        out, several = q(row), q(rows)
    assert op not in seen
    assert torch.equal(out, op(row, q._packed, q.reduce_range))
    scaled = torch.cat([rows / rows.abs().amax(dim=1, keepdim=True), q.anchor_rows])
    expected = op(scaled, q._packed, q.reduce_range)[:4] * rows.abs().amax(dim=1, keepdim=True)
    expected -= (rows.abs().amax(dim=1, keepdim=True) - 1) * q.bias
    assert torch.allclose(several, expected, rtol=1e-6, atol=1e-6)
