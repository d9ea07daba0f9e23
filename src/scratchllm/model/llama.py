"""The Llama 3 / Qwen3 model: GPT with five parts swapped (book bonus: GPT -> Llama 2/3, Qwen3).

Relative to ``scratchllm.model.gpt`` (see docs/gpt-to-llama.md): LayerNorm -> ``RMSNorm``,
GELU feed-forward -> ``SwiGLU``, learned absolute positions -> rotary embeddings
(``scratchllm.model.rope``), multi-head -> ``GroupedQueryAttention``, no biases and no
dropout. Qwen3 additionally normalizes each query and key head (``qk_norm``). The forward
contract (cache, attention_mask, position_ids) is GPTModel's, so ``scratchllm.generate``
works unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.model.attention import cached_attention
from scratchllm.model.inputs import positions_and_mask
from scratchllm.model.kv_cache import KVCache
from scratchllm.model.llama_config import LlamaConfig, RopeScaling
from scratchllm.model.rope import apply_rope, compute_rope_frequencies

__all__ = ["GroupedQueryAttention", "LlamaBlock", "LlamaConfig", "LlamaModel", "RMSNorm",
           "RopeScaling", "SwiGLU"]


class RMSNorm(nn.Module):
    """Scale each vector to unit root-mean-square, then by a learned weight; no mean, no bias.

    Cheaper than LayerNorm and as good in practice (Zhang & Sennrich 2019). Computed in
    float32 and cast back before the weight, exactly as Hugging Face's Llama, so bfloat16
    outputs match theirs bit for bit.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class SwiGLU(nn.Module):
    """fc3(SiLU(fc1(x)) * fc2(x)): a gated feed-forward (Shazeer 2020).

    fc1 is the gate, fc2 the "up" projection and fc3 the "down" projection, named as in the
    book's Llama chapter (Hugging Face: gate_proj, up_proj, down_proj).
    """

    def __init__(self, emb_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(emb_dim, hidden_dim, bias=False)
        self.fc2 = nn.Linear(emb_dim, hidden_dim, bias=False)
        self.fc3 = nn.Linear(hidden_dim, emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.silu(self.fc1(x)) * self.fc2(x))


class GroupedQueryAttention(nn.Module):
    """Causal attention where groups of query heads share one key/value head (Ainslie et al. 2023).

    n_kv_groups key/value heads instead of n_heads shrink the KV cache by n_heads/n_kv_groups;
    with n_kv_groups == n_heads this is ordinary multi-head attention. Keys are cached *after*
    the rotation, so cached decoding never re-rotates them.
    """

    def __init__(self, emb_dim: int, n_heads: int, n_kv_groups: int, head_dim: int, *,
                 qk_norm: bool = False, bias: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.n_heads, self.n_kv_groups, self.head_dim = n_heads, n_kv_groups, head_dim
        self.W_query = nn.Linear(emb_dim, n_heads * head_dim, bias=bias)
        self.W_key = nn.Linear(emb_dim, n_kv_groups * head_dim, bias=bias)
        self.W_value = nn.Linear(emb_dim, n_kv_groups * head_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * head_dim, emb_dim, bias=bias)
        # Qwen3: RMSNorm over each head's queries and keys, before the rotation.
        self.q_norm = RMSNorm(head_dim, eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps) if qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                mask: torch.Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        """``cos``/``sin`` are this call's rows of the RoPE tables, (T, D) or (B, T, D);
        ``mask`` and ``cache`` work as in ``MultiHeadAttention``."""
        batch, n_tokens, _ = x.shape
        queries = self.W_query(x).view(batch, n_tokens, self.n_heads, self.head_dim)
        keys = self.W_key(x).view(batch, n_tokens, self.n_kv_groups, self.head_dim)
        values = self.W_value(x).view(batch, n_tokens, self.n_kv_groups, self.head_dim)
        if self.q_norm is not None:
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        queries = apply_rope(queries.transpose(1, 2), cos, sin)  # (B, H, T, D)
        keys = apply_rope(keys.transpose(1, 2), cos, sin)  # (B, G, T, D)
        values = values.transpose(1, 2)
        out = cached_attention(queries, keys, values, mask=mask, cache=cache, layer=layer)
        out = out.transpose(1, 2).reshape(batch, n_tokens, self.n_heads * self.head_dim)
        return self.out_proj(out)


class LlamaBlock(nn.Module):
    """Pre-norm block as in GPT (book 4.5), with RMSNorm, GQA and SwiGLU, and no dropout."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.emb_dim, config.rms_norm_eps)
        self.att = GroupedQueryAttention(
            config.emb_dim, config.n_heads, config.n_kv_groups, config.head_dim,
            qk_norm=config.qk_norm, bias=config.attention_bias, eps=config.rms_norm_eps)
        self.norm2 = RMSNorm(config.emb_dim, config.rms_norm_eps)
        self.ff = SwiGLU(config.emb_dim, config.hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                mask: torch.Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.att(self.norm1(x), cos, sin, mask=mask, cache=cache, layer=layer)
        return x + self.ff(self.norm2(x))


class LlamaModel(nn.Module):
    """Maps token ids (B, T) to next-token logits (B, T, vocab_size), like ``GPTModel``.

    The RoPE cos/sin tables are computed once for the whole context window and kept as
    non-persistent buffers (float32, not saved with the weights).
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.trf_blocks = nn.ModuleList(LlamaBlock(config) for _ in range(config.n_layers))
        self.final_norm = RMSNorm(config.emb_dim, config.rms_norm_eps)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        if config.tie_weights:
            self.out_head.weight = self.tok_emb.weight
        self.to(config.torch_dtype)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.reset_rope_buffers()

    def reset_rope_buffers(self, device: torch.device | None = None) -> None:
        """(Re)compute the RoPE tables, e.g. after building on the meta device and loading
        weights with ``load_state_dict(..., assign=True)`` (forward does this by itself)."""
        c = self.config
        if device is None:  # stay where the tables are, unless they hold no data
            device = self.rope_cos.device if not self.rope_cos.is_meta else \
                self.tok_emb.weight.device
        self.rope_cos, self.rope_sin = compute_rope_frequencies(
            c.head_dim, c.rope_base, c.context_length, c.rope_scaling, device=device)

    def new_cache(self, max_length: int | None = None) -> KVCache:
        """An empty KV cache (n_kv_groups heads) for ``max_length`` positions; as in
        ``GPTModel.new_cache`` (Llama 3.2's 131k-token window would be gigabytes at batch 1)."""
        context = self.config.context_length
        return KVCache(self.config.n_layers,
                       context if max_length is None else min(max_length, context))

    def forward(self, token_ids: torch.Tensor, *, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                last_only: bool = False, return_hidden: bool = False) -> torch.Tensor:
        """Logits for every position of ``token_ids``; arguments as in ``GPTModel.forward``.

        Positions select rows of the RoPE tables, so with a left-padded ``attention_mask``
        every real token is rotated to its position counted over real tokens only.
        """
        c = self.config
        position_ids, mask = positions_and_mask(
            token_ids, vocab_size=c.vocab_size, context_length=c.context_length, cache=cache,
            attention_mask=attention_mask, position_ids=position_ids)
        n_tokens = token_ids.shape[1]
        if self.rope_cos.is_meta and not token_ids.is_meta:
            self.reset_rope_buffers()
        cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]
        x = self.tok_emb(token_ids)
        for layer, block in enumerate(self.trf_blocks):
            x = block(x, cos, sin, mask=mask, cache=cache, layer=layer)
        if cache is not None:
            cache.advance(n_tokens)
        if last_only:  # prefill needs one row of logits, not T x vocab_size of them
            x = x[:, -1:]
        x = self.final_norm(x)
        return x if return_hidden else self.out_head(x)
