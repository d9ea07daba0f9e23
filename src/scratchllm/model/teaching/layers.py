"""GELU and layer normalization written out formula by formula (book 4.2-4.3).

``scratchllm.model.layers`` computes the same functions with fused PyTorch kernels; these
versions exist so a reader can see every step.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TeachingGELU(nn.Module):
    """GELU in the tanh approximation GPT-2 was trained with (book 4.3).

    GELU(x) = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))). Unlike ReLU it is smooth
    and lets small negative values through, which helps optimization.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))
        return 0.5 * x * (1.0 + torch.tanh(inner))


class TeachingLayerNorm(nn.Module):
    """Give every token vector zero mean and unit variance, then rescale and shift (book 4.2).

    The variance divides by n (not n - 1), as GPT-2 does; ``eps`` keeps the division safe when
    the variance is zero. ``scale`` and ``shift`` are the trainable parameters that let the
    model undo the normalization where that helps.
    """

    def __init__(self, emb_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        normalized = (x - mean) / torch.sqrt(var + self.eps)
        return self.scale * normalized + self.shift
