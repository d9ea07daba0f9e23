"""The GPT model and its parts (book ch. 3-4).

The names below are imported on first use (``utils.lazy``): ``scratchllm.model.config``
(presets, no torch) loads without pulling in torch, which keeps ``scratchllm --help`` fast.
"""

from typing import TYPE_CHECKING

from scratchllm.utils.lazy import lazy_exports

_EXPORTS = {
    "MultiHeadAttention": "scratchllm.model.attention",
    "build_attention_mask": "scratchllm.model.attention",
    "GPTConfig": "scratchllm.model.config",
    "GPTModel": "scratchllm.model.gpt",
    "TransformerBlock": "scratchllm.model.gpt",
    "KVCache": "scratchllm.model.kv_cache",
    "GELU": "scratchllm.model.layers",
    "FeedForward": "scratchllm.model.layers",
    "LayerNorm": "scratchllm.model.layers",
    **{name: "scratchllm.model.llama" for name in (
        "GroupedQueryAttention", "LlamaBlock", "LlamaConfig", "LlamaModel", "RMSNorm",
        "RopeScaling", "SwiGLU")},
    "apply_rope": "scratchllm.model.rope",
    "compute_rope_frequencies": "scratchllm.model.rope",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from scratchllm.model.attention import MultiHeadAttention, build_attention_mask
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel, TransformerBlock
    from scratchllm.model.kv_cache import KVCache
    from scratchllm.model.layers import GELU, FeedForward, LayerNorm
    from scratchllm.model.llama import (
        GroupedQueryAttention, LlamaBlock, LlamaConfig, LlamaModel, RMSNorm, RopeScaling, SwiGLU,
    )
    from scratchllm.model.rope import apply_rope, compute_rope_frequencies
