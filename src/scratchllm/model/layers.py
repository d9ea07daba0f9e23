"""The building blocks of a transformer block: normalization, activation, feed-forward (book 4.2-4.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.model import feature_major


class LayerNorm(nn.Module):
    """Normalize each token's vector to zero mean and unit variance, then rescale (book 4.2).

    ``weight`` and ``bias`` are the trainable scale and shift the book calls ``scale``/``shift``.
    The variance is the biased one (divide by n), as in GPT-2.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class GELU(nn.Module):
    """GELU in GPT-2's tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (book 4.3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Expand each token to 4x the width, apply GELU, project back (book 4.3)."""

    def __init__(self, emb_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or 4 * emb_dim
        self.fc1 = nn.Linear(emb_dim, hidden_dim)
        self.act = GELU()
        self.fc2 = nn.Linear(hidden_dim, emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if type(self.act) is GELU and feature_major.applies(x, self.fc1, self.fc2):
            return feature_major.feed_forward(x, self.fc1, self.fc2)  # CPU fp32 training
        return self.fc2(self.act(self.fc1(x)))
