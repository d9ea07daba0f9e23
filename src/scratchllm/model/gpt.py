"""The GPT model: embeddings, a stack of transformer blocks, a final norm and an output head (book 4.1-4.6)."""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.model.attention import MultiHeadAttention
from scratchllm.model.config import GPTConfig
from scratchllm.model.dropout import Dropout
from scratchllm.model.inputs import positions_and_mask
from scratchllm.model.kv_cache import KVCache
from scratchllm.model.layers import FeedForward, LayerNorm


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Drop(Attn(Norm(x))), then x + Drop(FF(Norm(x))) (book 4.5)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm(config.emb_dim)
        self.att = MultiHeadAttention(config.emb_dim, config.n_heads, config.drop_rate,
                                      config.qkv_bias)
        self.norm2 = LayerNorm(config.emb_dim)
        self.ff = FeedForward(config.emb_dim)
        self.drop_shortcut = Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        att = self.att(self.norm1(x), mask=mask, cache=cache, layer=layer)
        x = x + (self.drop_shortcut(att) if self.training else att)  # eval: dropout is identity
        ff = self.ff(self.norm2(x))
        return x + (self.drop_shortcut(ff) if self.training else ff)


class GPTModel(nn.Module):
    """Maps token ids (B, T) to next-token logits (B, T, vocab_size) (book 4.6).

    Modules are created in the book's order with PyTorch's default initialization, so the
    same seed gives the book's starting weights (the fused QKV weight draws exactly the
    numbers of the book's separate query, key and value matrices when they have no bias).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = Dropout(config.drop_rate)
        self.trf_blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.final_norm = LayerNorm(config.emb_dim)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        if config.tie_weights:
            self.out_head.weight = self.tok_emb.weight

    def new_cache(self, max_length: int | None = None) -> KVCache:
        """An empty KV cache for ``max_length`` positions (at most, and by default,
        the context window). Generation passes prompt + new tokens: a 128k-token window
        preallocated at batch 1 would cost gigabytes that a short chat never touches."""
        context = self.config.context_length
        return KVCache(self.config.n_layers,
                       context if max_length is None else min(max_length, context))

    def forward(self, token_ids: torch.Tensor, *, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                last_only: bool = False, return_hidden: bool = False) -> torch.Tensor:
        """Logits for every position of ``token_ids``.

        cache: keys/values of earlier positions; new ones are appended to it.
        attention_mask: (B, past+T), 1 for real tokens and 0 for (left) padding. Positions are
            then counted over real tokens only, so a padded prompt sees the same position
            embeddings as the unpadded one.
        position_ids: (B, T) explicit positions, overriding both of the above.
        last_only: return (B, 1, vocab_size) logits of the last position only (generation;
            with left padding the last position is always a real token).
        return_hidden: return the final-normed hidden states (B, T, emb_dim) instead of logits,
            so a loss can apply ``out_head`` in chunks (``model.loss``) without a (B, T, vocab)
            tensor.
        """
        c = self.config
        position_ids, mask = positions_and_mask(
            token_ids, vocab_size=c.vocab_size, context_length=c.context_length, cache=cache,
            attention_mask=attention_mask, position_ids=position_ids)
        n_tokens = token_ids.shape[1]
        x = self.drop_emb(self.tok_emb(token_ids) + self.pos_emb(position_ids))
        for layer, block in enumerate(self.trf_blocks):
            x = block(x, mask=mask, cache=cache, layer=layer)
        if cache is not None:
            cache.advance(n_tokens)
        if last_only:  # prefill needs one row of logits, not T x vocab_size of them
            x = x[:, -1:]
        x = self.final_norm(x)
        return x if return_hidden else self.out_head(x)

