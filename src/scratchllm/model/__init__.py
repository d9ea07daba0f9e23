"""The GPT model and its parts (book ch. 3-4)."""

from scratchllm.model.attention import MultiHeadAttention, build_attention_mask
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel, TransformerBlock
from scratchllm.model.kv_cache import KVCache
from scratchllm.model.layers import GELU, FeedForward, LayerNorm
from scratchllm.model.llama import (
    GroupedQueryAttention, LlamaBlock, LlamaConfig, LlamaModel, RMSNorm, RopeScaling, SwiGLU,
)
from scratchllm.model.rope import apply_rope, compute_rope_frequencies

__all__ = [
    "GELU", "FeedForward", "GPTConfig", "GPTModel", "KVCache", "LayerNorm",
    "MultiHeadAttention", "TransformerBlock", "build_attention_mask",
    "GroupedQueryAttention", "LlamaBlock", "LlamaConfig", "LlamaModel", "RMSNorm", "RopeScaling",
    "SwiGLU", "apply_rope", "compute_rope_frequencies",
]
