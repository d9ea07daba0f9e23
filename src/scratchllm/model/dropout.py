"""Dropout whose random mask is cheap to draw on the CPU (book 3.5 and 4.5 use dropout).

Dropout zeroes each element with probability ``p`` and scales the survivors by 1 / (1 - p),
so the expected output equals the input. ``nn.Dropout`` on the CPU draws its mask with
``bernoulli_``: one double-precision uniform (two Mersenne-Twister draws and a conversion)
per element, on one thread, then a division and a multiplication: the GPT-2 training
profile spent about 8% of a step there, most of it on the attention weights (2/3 of the
dropped elements). Here every element gets one 31-bit integer from the same generator
(``random_`` on int32, about 3x faster) and is kept when it is below (1 - p) * 2^31; the
comparison writes the 0/1 mask as floats directly and one in-place scale finishes it.

The distribution is the same (the keep probability is within 2^-31 of 1 - p, as the double
uniform is within 2^-53), ``torch.manual_seed`` seeds it and checkpoints restore it, but a
given seed gives different masks than ``nn.Dropout``. Other devices keep ``F.dropout``,
whose fused kernels are already fast there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_RANGE = 2 ** 31  # int32 random_() draws uniformly from [0, 2^31)


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, *, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """A (shape) tensor holding 1 / (1 - p) with probability 1 - p and 0 otherwise."""
    keep = 1.0 - p
    bits = torch.empty(shape, dtype=torch.int32, device=device).random_()
    # kept when bits < round(keep * 2^31); "<= that - 1" keeps the bound inside int32
    mask = torch.le(bits, round(keep * _RANGE) - 1,
                    out=torch.empty(shape, dtype=dtype, device=device))
    return mask.mul_(1.0 / keep)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with ``dropout_mask``'s cheaper mask on the CPU."""
    if not training or p == 0.0:
        return x
    if (x.device.type != "cpu" or not 0.0 < p < 1.0 or not x.is_floating_point()
            or torch.compiler.is_compiling()):  # inductor draws F.dropout's mask in-kernel
        return F.dropout(x, p, training)
    return x * dropout_mask(x.shape, p, dtype=x.dtype, device=x.device)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same settings, same ``p`` and ``training``) drawing ``dropout_mask``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
