"""Self-attention built up one idea at a time, as chapter 3 of the book does (book 3.3-3.6).

Each step adds one thing to the previous one:

1. ``simple_self_attention``: similarity scores, softmax, weighted sum; nothing is trained.
2. ``SelfAttentionV1`` / ``SelfAttentionV2``: trainable query/key/value projections.
3. ``CausalAttention``: a token may not look at later tokens; dropout on the weights.
4. ``MultiHeadAttentionWrapper``: several causal heads side by side.
5. ``WeightSplitMultiHeadAttention``: the same heads from one projection split into slices.

The production module, ``scratchllm.model.attention.MultiHeadAttention``, computes step 5 with
one fused projection and a fused attention kernel.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from scratchllm.errors import ConfigError, ContextLengthError


class SimpleAttention(NamedTuple):
    scores: torch.Tensor  # (..., T, T) raw dot products
    weights: torch.Tensor  # (..., T, T) softmax of the scores, each row sums to 1
    context: torch.Tensor  # (..., T, d) weighted sums of the inputs


def simple_self_attention(inputs: torch.Tensor) -> SimpleAttention:
    """Attention without trainable weights (book 3.3).

    Row i of the scores says how similar token i is to every token (a dot product); softmax
    turns each row into weights that sum to 1; the context vector of token i is the weighted
    sum of all input vectors. Works on (T, d) or batched (B, T, d) inputs.
    """
    scores = inputs @ inputs.transpose(-2, -1)
    weights = torch.softmax(scores, dim=-1)
    return SimpleAttention(scores, weights, weights @ inputs)


def _scaled_softmax(scores: torch.Tensor, key_dim: int) -> torch.Tensor:
    """Softmax of scores divided by sqrt(d_k), which keeps the softmax out of its flat,
    tiny-gradient regime when d_k is large (book 3.4.1)."""
    return torch.softmax(scores / math.sqrt(key_dim), dim=-1)


class SelfAttentionV1(nn.Module):
    """Scaled dot-product attention with trainable weight matrices as raw parameters (book 3.4).

    Queries, keys and values are the inputs multiplied by W_query, W_key and W_value, so
    training can learn what a token looks for (query) and what it offers (key, value).
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        queries, keys, values = x @ self.W_query, x @ self.W_key, x @ self.W_value
        scores = queries @ keys.transpose(-2, -1)
        return _scaled_softmax(scores, keys.shape[-1]) @ values


class SelfAttentionV2(nn.Module):
    """The same computation with ``nn.Linear`` projections (book 3.4.2).

    ``nn.Linear`` stores the transposed matrix, has a better default initialization than
    ``torch.rand`` and an optional bias.
    """

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)
        scores = queries @ keys.transpose(-2, -1)
        return _scaled_softmax(scores, keys.shape[-1]) @ values


def _check_length(n_tokens: int, context_length: int) -> None:
    if n_tokens > context_length:
        raise ContextLengthError(
            f"{n_tokens} tokens exceed the attention's context length of {context_length}; "
            "shorten the input or build the module with a larger context_length"
        )


class CausalAttention(nn.Module):
    """Self-attention that cannot see the future, with dropout on the weights (book 3.5).

    Scores above the diagonal (key after query) are set to -inf before the softmax, so those
    weights become exactly 0 and the remaining ones still sum to 1. The mask is a buffer: it
    moves with the module to the GPU but is not trained.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        future = torch.triu(torch.ones(context_length, context_length), diagonal=1)
        self.register_buffer("mask", future.bool(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_tokens = x.shape[-2]
        _check_length(n_tokens, self.context_length)
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)
        scores = queries @ keys.transpose(-2, -1)
        scores = scores.masked_fill(self.mask[:n_tokens, :n_tokens], float("-inf"))
        weights = self.dropout(_scaled_softmax(scores, keys.shape[-1]))
        return weights @ values


class MultiHeadAttentionWrapper(nn.Module):
    """Several independent causal heads whose outputs are concatenated (book 3.6.1).

    Each head can attend to different relations; the output width is ``num_heads * d_out``.
    Simple but slow: the heads run one after another.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            CausalAttention(d_in, d_out, context_length, dropout, qkv_bias)
            for _ in range(num_heads)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)


class WeightSplitMultiHeadAttention(nn.Module):
    """Multi-head attention from one projection per role, split into heads (book 3.6.2).

    One (d_in -> d_out) matrix each for queries, keys and values; its output is reshaped into
    ``num_heads`` slices of ``d_out // num_heads`` features that attend independently in one
    batched matrix multiply. ``out_proj`` then mixes the heads' concatenated outputs.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        if d_out % num_heads != 0:
            raise ConfigError(
                f"d_out ({d_out}) must be divisible by num_heads ({num_heads}) so every head "
                "gets the same width; change one of them"
            )
        self.context_length = context_length
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        future = torch.triu(torch.ones(context_length, context_length), diagonal=1)
        self.register_buffer("mask", future.bool(), persistent=False)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, d_out) -> (B, heads, T, head_dim)."""
        batch, n_tokens, _ = t.shape
        return t.view(batch, n_tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n_tokens, _ = x.shape
        _check_length(n_tokens, self.context_length)
        queries = self._split_heads(self.W_query(x))
        keys = self._split_heads(self.W_key(x))
        values = self._split_heads(self.W_value(x))
        scores = queries @ keys.transpose(2, 3)  # (B, heads, T, T)
        scores = scores.masked_fill(self.mask[:n_tokens, :n_tokens], float("-inf"))
        weights = self.dropout(_scaled_softmax(scores, self.head_dim))
        context = (weights @ values).transpose(1, 2).reshape(batch, n_tokens, -1)
        return self.out_proj(context)
