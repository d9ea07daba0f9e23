"""Dropout whose random mask is cheap to draw on the CPU (book 3.5 and 4.5 use dropout).

Dropout zeroes each element with probability ``p`` and scales the survivors so the expected
output equals the input. ``nn.Dropout`` on the CPU draws its mask with ``bernoulli_``: one
double-precision uniform (two Mersenne-Twister draws) per element, on one thread: the GPT-2
training profile spent about 8% of a step there. Even one 32-bit draw per element (int32
``random_``) cost ~2 ns an element, most of the attention-weight masks' time.

Here a mask needs only 16 random bits per element, and they come four to a 64-bit word from
NumPy's PCG64, seeded by one 63-bit draw from PyTorch's generator per mask: ~4x fewer
generator steps, each cheaper than a Mersenne-Twister one. An element is kept when its 16
bits, read as a signed integer, fall below ``keep_threshold``: probability ``q =
round((1 - p) * 2^16) / 2^16`` (within 2^-17 of 1 - p: 0.8999939 for p = 0.1), and the
survivors are scaled by ``1 / q``, so the expected output is exactly the input.

``torch.manual_seed`` seeds every mask and a checkpoint's generator state replays them (the
seed draw advances PyTorch's generator); a given seed gives different masks than
``nn.Dropout``. Other devices, and code being compiled, keep ``F.dropout``, whose fused
kernels are already fast there.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_BITS = 16  # random bits per element: 2^-16 resolution for the keep probability
_LEVELS = 1 << _BITS


def keep_threshold(p: float) -> int:
    """How many of the 2^16 equally likely 16-bit values keep an element (0 to 2^16)."""
    return round((1.0 - p) * _LEVELS)


def random_int16(numel: int) -> torch.Tensor:
    """``numel`` uniform int16 values (all 2^16 of them equally likely) on the CPU, from a
    PCG64 stream seeded by one draw from PyTorch's default generator."""
    seed = int(torch.empty((), dtype=torch.int64).random_())
    words = np.random.PCG64(seed).random_raw(-(-numel // 4))  # uint64, 4 int16 lanes each
    return torch.from_numpy(words.view(np.int16))[:numel]


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, *,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, float]:
    """A CPU tensor of ``shape`` holding 1 with probability ~``1 - p`` (see the module
    docstring) and 0 otherwise, and the scale ``1 / q`` that keeps the expected output equal
    to the input.

    The mask is floating point: multiplying by a float tensor is PyTorch's fastest masking
    op on the CPU (``where`` and ``masked_fill`` are ~3x slower, a bool or uint8 operand is
    first converted), and the comparison writes it in one pass.
    """
    threshold = keep_threshold(p)
    if not 0 < threshold <= _LEVELS:
        raise ValueError(f"dropout probability {p} rounds to dropping everything")
    if threshold == _LEVELS:  # p below 2^-17 (the bound would not fit an int16)
        return torch.ones(shape, dtype=dtype), 1.0
    numel = math.prod(shape)
    mask = torch.lt(random_int16(numel), threshold - _LEVELS // 2,  # int16 is signed
                    out=torch.empty(numel, dtype=dtype))
    return mask.view(shape), _LEVELS / threshold


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, *, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """A (shape) tensor holding ``1 / q`` where ``keep_mask`` keeps an element and 0 elsewhere."""
    mask, scale = keep_mask(shape, p, dtype=dtype)
    return mask.mul_(scale).to(device)


def cheap_mask_applies(x: torch.Tensor, p: float) -> bool:
    """Whether ``dropout`` draws ``keep_mask``: CPU floating-point tensors, eager code, and a
    ``p`` that 16 bits can tell from 0 and 1 (``F.dropout`` handles the rest exactly)."""
    return (x.device.type == "cpu" and x.is_floating_point() and 0 < keep_threshold(p) < _LEVELS
            and not torch.compiler.is_compiling())  # inductor draws F.dropout's mask in-kernel


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with ``keep_mask``'s cheaper mask on the CPU."""
    if not training or p == 0.0:
        return x
    if not 0.0 < p < 1.0 or not cheap_mask_applies(x, p):
        return F.dropout(x, p, training)
    return x * dropout_mask(x.shape, p, dtype=x.dtype, device=x.device)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same settings, same ``p`` and ``training``) drawing ``keep_mask``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
