"""Causal multi-head self-attention with one fused QKV projection (book 3.6, made fast).

The book builds attention step by step in ``scratchllm.model.teaching``; this is the
production version: one matrix multiply for queries, keys and values, and PyTorch's
``scaled_dot_product_attention``, which picks a flash or memory-efficient kernel when one
applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.model.causal_attention import (causal_attention_with_dropout,
                                               projected_attention_applies,
                                               projected_causal_attention,
                                               written_out_attention_applies)
from scratchllm.model.kv_cache import KVCache


class MultiHeadAttention(nn.Module):
    def __init__(self, emb_dim: int, n_heads: int, drop_rate: float = 0.0,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = emb_dim // n_heads
        self.drop_rate = drop_rate
        # Rows [0, E) of the weight are the query projection, [E, 2E) keys, [2E, 3E) values.
        self.qkv = nn.Linear(emb_dim, 3 * emb_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(emb_dim, emb_dim)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """Attend over the sequence (and the cache's earlier positions).

        ``mask`` is a boolean (B or 1, 1, T, S) tensor, True where a query may look at a key;
        ``None`` means plain causal attention over ``x`` alone (or, with a cache, a single new
        token that may see every cached one).
        """
        batch, n_tokens, emb_dim = x.shape
        if (self.training and mask is None and cache is None
                and projected_attention_applies(x, self.qkv, self.drop_rate)):
            # fp32 CPU training: projection and attention in one, no wide QKV output
            return self.out_proj(projected_causal_attention(x, self.qkv, self.n_heads,
                                                            self.drop_rate))
        qkv = self.qkv(x).view(batch, n_tokens, 3, self.n_heads, self.head_dim)
        queries, keys, values = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
        out = cached_attention(queries, keys, values, mask=mask, cache=cache, layer=layer,
                               dropout_p=self.drop_rate if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, n_tokens, emb_dim)
        return self.out_proj(out)


def cached_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *,
                     mask: torch.Tensor | None, cache: KVCache | None, layer: int,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention of (B, H, T, D) queries over the cache's keys and values
    plus the new ones; every model family's attention ends here.

    With no explicit ``mask``: a fresh sequence uses the causal fast path (``is_causal``), a
    single new token sees everything cached, and several new tokens after a cached prefix get
    an offset causal mask. Keys/values may have fewer heads than queries (grouped-query
    attention): each key/value head then serves ``H_q / H_kv`` query heads.

    A cache with an ``attend`` method takes the whole step over: the server's batched
    decode (``scratchllm.serve.slots``) attends each row over its own sequence, so a row's
    result never depends on the lengths of the rows beside it.
    """
    attend = getattr(cache, "attend", None)
    if attend is not None:
        return attend(queries, keys, values, mask=mask, layer=layer)
    n_tokens = queries.shape[2]
    past = 0
    if cache is not None:
        past = cache.length
        keys, values = cache.update(layer, keys, values)
        if mask is None and n_tokens > 1 and past > 0:  # a fresh prefill stays on is_causal
            mask = build_attention_mask(n_tokens, past, device=queries.device)
    if (dropout_p > 0.0 and mask is None and past == 0 and n_tokens > 1
            and keys.shape == queries.shape and written_out_attention_applies(queries)):
        return causal_attention_with_dropout(queries, keys, values, dropout_p)
    return F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=mask, dropout_p=dropout_p,
        # n_tokens first: under torch.compile ``past`` may be a symbol, and ``past == 0``
        # must not become the value itself (a SymBool is not a bool)
        is_causal=n_tokens > 1 and mask is None and past == 0,
        enable_gqa=keys.shape[1] != queries.shape[1],
    )


def build_attention_mask(n_tokens: int, past: int, padding_mask: torch.Tensor | None = None,
                   device: torch.device | None = None) -> torch.Tensor:
    """Boolean (B or 1, 1, T, past+T) mask: True where query i may attend to key j.

    Query i sits at absolute position ``past + i`` and sees keys up to and including itself
    (the causal mask of book 3.5). ``padding_mask`` (B, past+T), 1 for real tokens and 0 for
    left padding, additionally hides padded keys. Every query keeps its own position visible,
    so a padding query's row is never all-masked (which would give NaN); the outputs at padded
    positions are ignored anyway.
    """
    total = past + n_tokens
    if padding_mask is not None:
        device = padding_mask.device
    query_pos = torch.arange(past, total, device=device).unsqueeze(1)
    key_pos = torch.arange(total, device=device).unsqueeze(0)
    mask = key_pos <= query_pos  # (T, S)
    if padding_mask is None:
        return mask[None, None]
    keys_real = padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    own_position = key_pos == query_pos
    return (mask & keys_real) | own_position
