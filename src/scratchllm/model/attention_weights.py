"""The attention weights of one layer: which earlier tokens each token looks at (book ch. 3).

The production attention (``scratchllm.model.attention``) never forms the weight matrix:
``scaled_dot_product_attention`` fuses softmax and the value product. For learners we
recompute it. Every model family ends its attention in ``cached_attention``, which hands
the whole step to a cache that has an ``attend`` method; ``_Recorder`` is such a cache. It
attends normally in the layers before the chosen one and, at that layer, takes the
queries and keys *as the model computed them* (after the projections, Qwen3's QK-norm and
the rotary embedding) and forms softmax(Q K^T / sqrt(d) + causal mask) itself. So GPT-2,
Llama and Qwen3 (RoPE, grouped-query attention) need no family-specific code, and no hook
is attached to the model: a server can run this beside its own decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ConfigError


class _Captured(Exception):
    """Raised by the recorder once it has the weights: the later layers need not run."""


class _Recorder:
    """A stand-in KV cache (empty, never filled) that records one layer's attention."""

    length = 0

    def __init__(self, layer: int) -> None:
        self.layer = layer
        self.weights: torch.Tensor | None = None

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *,
               mask: torch.Tensor | None, layer: int) -> torch.Tensor:
        grouped = keys.shape[1] != queries.shape[1]
        if layer != self.layer:
            return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask,
                                                  is_causal=mask is None, enable_gqa=grouped)
        if grouped:  # each key head serves n_heads / n_kv_groups consecutive query heads
            keys = keys.repeat_interleave(queries.shape[1] // keys.shape[1], dim=1)
        scores = queries.float() @ keys.float().transpose(-2, -1) / queries.shape[-1] ** 0.5
        n = scores.shape[-1]
        allowed = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
        if mask is not None:
            allowed = allowed & mask
        self.weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        raise _Captured

    def advance(self, n_tokens: int) -> None:  # the model calls this after the last layer
        pass


def attention_weights(model: nn.Module, token_ids: Sequence[int] | torch.Tensor,
                      layer: int, head: int | None = None) -> torch.Tensor:
    """Attention weights of ``layer`` (0-based) for one token sequence, float32.

    Returns (n_heads, T, T) or, with ``head``, (T, T): row i holds how much token i attends
    to each token j <= i (each row sums to 1; entries above the diagonal are 0). Run the
    model in eval mode: in training mode dropout changes the hidden states.
    """
    config = model.config
    n_layers, n_heads = config.n_layers, config.n_heads
    if not 0 <= layer < n_layers:
        raise ConfigError(f"layer must be in 0..{n_layers - 1} (the model has {n_layers} "
                          f"layers), got {layer}")
    if head is not None and not 0 <= head < n_heads:
        raise ConfigError(f"head must be in 0..{n_heads - 1} (the model has {n_heads} heads "
                          f"per layer), got {head}")
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    if ids.dim() != 1 or ids.numel() == 0:
        raise ConfigError(f"token_ids must be a non-empty 1-D sequence, got shape "
                          f"{tuple(ids.shape)}")
    device = next(model.parameters()).device
    recorder = _Recorder(layer)
    with torch.inference_mode():
        try:
            model(ids[None].to(device), cache=recorder)
        except _Captured:
            pass
    if recorder.weights is None:
        raise RuntimeError(f"layer {layer} never attended: does {type(model).__name__} route "
                           "its attention through scratchllm.model.attention.cached_attention?")
    weights = recorder.weights[0].cpu()
    return weights if head is None else weights[head]
