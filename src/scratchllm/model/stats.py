"""Size and cost of a GPT, Llama 3 or Qwen3 model, computed from its config without building
it (book 4.6).

Counting analytically lets ``scratchllm info`` describe GPT-2 XL in microseconds instead of
allocating 6 GB; the tests check the formulas against ``sum(p.numel())`` of real models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.model.config import GPTConfig
from scratchllm.model.llama_config import LlamaConfig

AnyConfig = GPTConfig | LlamaConfig

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64,
}


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of each part of a GPT model (book 4.6)."""

    token_embedding: int
    position_embedding: int
    blocks: int  # all transformer blocks together
    final_norm: int
    out_head: int  # 0 when tied to the token embedding

    @property
    def embedding(self) -> int:
        return self.token_embedding + self.position_embedding

    @property
    def non_embedding(self) -> int:
        """Everything except the two embedding tables (Kaplan et al. 2020's N)."""
        return self.blocks + self.final_norm + self.out_head

    @property
    def total(self) -> int:
        return self.embedding + self.non_embedding


def _block_parameters(config: GPTConfig) -> int:
    """One transformer block (book 4.5): two LayerNorms, attention, a 4x feed-forward."""
    e = config.emb_dim
    norms = 2 * (2 * e)  # scale + shift, twice
    qkv = 3 * e * e + (3 * e if config.qkv_bias else 0)
    out_proj = e * e + e
    feed_forward = (e * 4 * e + 4 * e) + (4 * e * e + e)
    return norms + qkv + out_proj + feed_forward


def _llama_block_parameters(config: LlamaConfig) -> int:
    """One Llama / Qwen3 block: two RMSNorms (scale only), grouped-query attention (fewer
    key/value heads; Qwen3's per-head query/key RMSNorms), a SwiGLU feed-forward (3 matrices)."""
    e, d = config.emb_dim, config.head_dim
    q, kv = config.n_heads * d, config.n_kv_groups * d
    attention = e * q + 2 * e * kv + q * e
    if config.attention_bias:
        attention += q + 2 * kv + e
    if config.qk_norm:
        attention += 2 * d
    return 2 * e + attention + 3 * e * config.hidden_dim


def parameter_counts(config: AnyConfig, tied: bool | None = None) -> ParameterCounts:
    """Per-part parameter counts of ``GPTModel(config)`` or ``LlamaModel(config)``; ``tied``
    overrides config.tie_weights."""
    tied = config.tie_weights if tied is None else tied
    e = config.emb_dim
    llama = isinstance(config, LlamaConfig)
    return ParameterCounts(
        token_embedding=config.vocab_size * e,
        position_embedding=0 if llama else config.context_length * e,  # RoPE: no table
        blocks=config.n_layers * (_llama_block_parameters(config) if llama
                                  else _block_parameters(config)),
        final_norm=e if llama else 2 * e,
        out_head=0 if tied else config.vocab_size * e,
    )


def count_parameters(model_or_config: nn.Module | AnyConfig, tied: bool | None = None) -> int:
    """Number of distinct parameters (book 4.6).

    For a config the count is analytic. For a module, shared tensors count once. ``tied``
    asks "how many if the output head were (True) or were not (False) shared with the token
    embedding": with the book's untied 163,009,536-parameter GPT-2 small, ``tied=True`` gives
    GPT-2's 124,412,160. ``None`` counts the model as it is.
    """
    if isinstance(model_or_config, (GPTConfig, LlamaConfig)):
        return parameter_counts(model_or_config, tied).total
    if not isinstance(model_or_config, nn.Module):
        raise ConfigError(
            f"count_parameters needs a GPTConfig or an nn.Module, got "
            f"{type(model_or_config).__name__}"
        )
    model = model_or_config
    total = sum(p.numel() for p in model.parameters())  # parameters() skips shared duplicates
    if tied is None:
        return total
    head, emb = getattr(model, "out_head", None), getattr(model, "tok_emb", None)
    if head is None or emb is None:
        raise ConfigError(
            "tied=True/False needs a model with out_head and tok_emb (a GPTModel); pass "
            "tied=None to count any other module"
        )
    is_tied = head.weight is emb.weight
    if tied and not is_tied:
        total -= head.weight.numel()
    elif not tied and is_tied:
        total += head.weight.numel()
    return total


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPE_NAMES:
        raise ConfigError(
            f"unknown dtype {dtype!r}; use a torch.dtype or one of: {', '.join(_DTYPE_NAMES)}"
        )
    return _DTYPE_NAMES[key]


def model_memory_bytes(model_or_config: nn.Module | AnyConfig,
                       dtype: torch.dtype | str = torch.float32) -> int:
    """Bytes the weights take in ``dtype`` (book 4.6: 163M params x 4 bytes = 621.83 MB).

    Only the weights: training also needs gradients and optimizer state (AdamW: about 4x
    the weights in all), and inference needs activations and the KV cache.
    """
    element_size = torch.empty((), dtype=_resolve_dtype(dtype)).element_size()
    return count_parameters(model_or_config) * element_size


def flops_per_token(config: AnyConfig, seq_len: int | None = None) -> int:
    """Forward-pass floating-point operations per token, estimated from the config.

    Uses Kaplan et al. 2020 (Table 1): C_forward = 2 N + 2 n_layers seq_len emb_dim.

    * 2 N: every weight does one multiply and one add per token. N here is every parameter
      that takes part in a matrix multiply or elementwise op after the embedding lookup: the
      non-embedding parameters plus the output head's vocab_size x emb_dim matrix even when it
      is tied (the multiply costs the same when the matrix is shared). Kaplan's table lists
      this "de-embed" cost but leaves it out of the total; for GPT-2's vocabulary it is about
      a third of the work, so it is counted here.
    * 2 n_layers seq_len emb_dim: queries times keys and weights times values, 4 seq_len
      emb_dim per layer for a token that sees all seq_len positions, halved because a causal
      token sees on average half of them.

    ``seq_len`` defaults to the context length. Training (forward + backward) is about 3x
    this, the familiar 6 N; see ``training_flops_per_token``.
    """
    seq_len = config.context_length if seq_len is None else seq_len
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ConfigError(f"seq_len must be a positive integer, got {seq_len!r}")
    counts = parameter_counts(config, tied=False)  # head counted as a matmul either way
    # queries and keys are n_heads x head_dim wide (emb_dim, except Qwen3's wider heads)
    width = (config.n_heads * config.head_dim if isinstance(config, LlamaConfig)
             else config.emb_dim)
    attention = 2 * config.n_layers * seq_len * width
    return 2 * counts.non_embedding + attention


def training_flops_per_token(config: AnyConfig, seq_len: int | None = None) -> int:
    """Forward plus backward: the backward pass costs about twice the forward (6 N in all)."""
    return 3 * flops_per_token(config, seq_len)
