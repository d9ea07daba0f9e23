"""An int8 ``Linear`` for CPU decoding: fbgemm's int8 GEMM with one activation scale per row.

PyTorch's dynamic int8 kernel (``quantized::linear_dynamic``, fbgemm) is the fastest int8
matmul on this CPU (benchmarks/decode.py), but it quantizes its whole input with ONE grid, from
the input's min and max: evaluating a (tokens, features) block rounds every token on the grid
of the loudest one, and in a batch a row's output depends on the other rows.

One row (a decode step of ``generate``/``chat``) is already per-row: the kernel rounds it on
its own [min, max] grid, 255 steps (an asymmetric grid, at least as fine as a symmetric one on
its peak), so it goes to the kernel as it is, with no op before or after it: 11% less linear
time per GPT-2 token than scaling two anchor columns by the row's peak, 2.54x float32's
decode tokens/s instead of 2.26x (RESULTS.md, "decode, int8 speed").

Several rows (a prompt's prefill, a ``generate_batch``/``serve`` step) get per-row scales from
linearity, ``W @ x = |x|max * (W @ (x / |x|max))``: each row is divided by its own largest
magnitude, so it lies in [-1, 1], and one extra *anchor row* (1, -128/127, 0, ...) pins the
kernel's range, so it picks the same grid (1/127, zero point 128) whatever else is in the
batch: each row is rounded symmetrically on 1/127ths of its own peak, and its output depends
on that row alone, bit for bit (the kernel's integer sums are exact).

The price of the fast lone row: a prompt decoded alone (asymmetric grid of its row) and the
same prompt inside a batch (symmetric grid of its peak) can differ in the last bits of the
logits, as float32 matmuls of different batch sizes do; the tests check that greedy decoding
picks the same tokens. Rows of one batch never affect each other.

With AVX512-VNNI the kernel's int32 dot products cannot saturate, so activations get all
8 bits; without it the 16-bit pairwise sums could overflow, and they get 7 (PyTorch's own
``reduce_range``). On the benchmark's byte-level GPT the 8th bit is most of the gain: held-out
perplexity +1.03% with PyTorch's 7-bit per-tensor default, +0.35% with 8 bits, +0.30% with
8 bits per row (RESULTS.md, decode).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from scratchllm.model.linear_op import opaque_linear

_fbgemm_linear = torch.ops.quantized.linear_dynamic.default  # fbgemm's u8 x s8 -> float32
# The C++ entry under the op's Python wrapper (one Python frame less per call).
_fbgemm_entry = getattr(_fbgemm_linear, "_op", _fbgemm_linear)
_no_torch_function = torch._C.DisableTorchFunction


def _int8_matmul(x: torch.Tensor, packed, reduce_range: bool) -> torch.Tensor:
    """fbgemm's int8 GEMM, called without PyTorch's ``__torch_function__`` scan of its arguments.

    That scan looks up ``__torch_function__`` on every argument, and on the packed weights (a
    ``torch.ScriptObject``) a missing attribute costs a C++ exception: 12-15 us of a ~20 us
    call for a decode row, against ~5 us with the scan off (49 calls per GPT-2 token, ~0.7 ms
    of a ~12 ms int8 token at 2 threads; RESULTS.md, "decode, int8 at 2 threads"). The
    arguments are plain tensors, the packed weights and a bool, so there is nothing the scan
    could find.
    """
    with _no_torch_function():
        return _fbgemm_entry(x, packed, reduce_range)


def _has_vnni() -> bool:
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # an old or unusual build: be safe, use 7-bit activations
        return False


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (one scale per output row) and per-row int8 inputs."""

    kind = "int8"  # what ``cpu_linear.describe_linears`` (generate --stats) calls it
    handle: int | None = None  # set by ``linear_op.register`` when a compiled model uses it

    def __init__(self, linear: nn.Linear, reduce_range: bool | None = None) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # symmetric per output row, codes -128..127 over [-peak, peak]: PyTorch's per-channel
        # observer's grid (weights alone: +0.13% perplexity on the benchmark, +0.35% on peak/127)
        scale = (weight.abs().amax(dim=1) / 127.5).clamp_min(1e-12).double()
        codes = (weight / scale[:, None].float()).round().clamp(-128, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        with warnings.catch_warnings():  # quantized-tensor constructors warn of deprecation
            warnings.simplefilter("ignore")
            qweight = torch._make_per_channel_quantized_tensor(
                codes, scale, torch.zeros_like(scale, dtype=torch.long), 0)
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)  # adds the bias
        self.reduce_range = (not _has_vnni()) if reduce_range is None else reduce_range
        half = 64 if self.reduce_range else 128  # codes 0..127 or 0..255, zero point `half`
        # plain attributes, not buffers: the layer lives on the CPU and is never saved, and a
        # plain attribute is read without nn.Module.__getattr__ (49 layers per GPT-2 token)
        self.bias = bias
        # the rows after the scaled ones: range [-half / (half - 1), 1] -> step 1 / (half - 1)
        low = -half / (half - 1)
        if self.in_features >= 2:
            self.anchor_rows = torch.zeros(1, self.in_features)
            self.anchor_rows[0, :2] = torch.tensor([1.0, low])
        else:
            self.anchor_rows = torch.tensor([[1.0], [low]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.handle is not None and torch.compiler.is_compiling():
            # inside torch.compile: one opaque operator instead of a graph break
            return opaque_linear(x, self.handle, self.out_features)
        return self.eager_forward(x)

    def eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's computation (``forward`` outside ``torch.compile``)."""
        if x.numel() == self.in_features and x.dim() >= 2:
            # One row (a decode step): the kernel's own grid is this row's; nothing else to do.
            return _int8_matmul(x, self._packed, self.reduce_range)
        rows = x.reshape(-1, self.in_features)
        count = len(rows)
        # max(amax, -amin): two passes over the rows, but no |rows| copy (1.5x faster at 1024)
        peak = torch.maximum(rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True).neg_())
        peak = peak.clamp_min_(1e-30)  # an all-zero row stays zero
        scaled = torch.empty(count + len(self.anchor_rows), self.in_features)
        torch.div(rows, peak, out=scaled[:count])
        scaled[count:] = self.anchor_rows
        out = _int8_matmul(scaled, self._packed, self.reduce_range)[:count]  # W (x / peak) + b
        out.mul_(peak)
        if self.bias is not None:  # undo the kernel's bias times peak: peak * W x' + bias
            out.addr_(peak.view(-1) - 1, self.bias, alpha=-1)
        return out.view(*x.shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the int8 codes stand for (for checks; decoding never needs it)."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.dequantize()

    def __setstate__(self, state) -> None:
        """A copy (``copy.deepcopy``) is not the registered layer: it needs its own handle."""
        super().__setstate__(state)
        self.__dict__.pop("handle", None)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activation_bits={7 if self.reduce_range else 8}")


def swap_linears(model: nn.Module) -> int:
    """Replace every plain ``nn.Linear`` under ``model`` by an ``Int8Linear``; return how many."""
    names = [name for name, module in model.named_modules()
             if name and type(module) is nn.Linear]
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, Int8Linear(getattr(owner, leaf)))
    return len(names)


__all__ = ["Int8Linear", "swap_linears"]
