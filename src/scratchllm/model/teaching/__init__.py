"""The book's step-by-step attention and layer code, kept readable for learning (book ch. 3-4).

These modules show each idea on its own: plain dot-product attention, trainable projections,
the causal mask, several heads. The fast production versions live in ``scratchllm.model``;
``scratchllm.model.teaching.convert`` copies weights between the two so tests can prove they
compute the same function.
"""

from scratchllm.model.teaching.attention import (
    CausalAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    WeightSplitMultiHeadAttention,
    simple_self_attention,
)
from scratchllm.model.teaching.convert import load_fused_into_teaching, load_teaching_into_fused
from scratchllm.model.teaching.layers import TeachingGELU, TeachingLayerNorm

__all__ = [
    "CausalAttention", "MultiHeadAttentionWrapper", "SelfAttentionV1", "SelfAttentionV2",
    "TeachingGELU", "TeachingLayerNorm", "WeightSplitMultiHeadAttention",
    "load_fused_into_teaching", "load_teaching_into_fused", "simple_self_attention",
]
