"""The book's step-by-step attention (ch. 3): published numbers, and equality with the fused module."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ConfigError, ContextLengthError
from scratchllm.model.attention import MultiHeadAttention
from scratchllm.model.teaching import (
    CausalAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    WeightSplitMultiHeadAttention,
    load_fused_into_teaching,
    load_teaching_into_fused,
    simple_self_attention,
)

# "Your journey starts with one step" as 3-d embeddings (book 3.3).
INPUTS = torch.tensor([
    [0.43, 0.15, 0.89],
    [0.55, 0.87, 0.66],
    [0.57, 0.85, 0.64],
    [0.22, 0.58, 0.33],
    [0.77, 0.25, 0.10],
    [0.05, 0.80, 0.55],
])
BATCH = torch.stack((INPUTS, INPUTS))


def test_simple_attention_matches_book_3_3():
    result = simple_self_attention(INPUTS)
    torch.testing.assert_close(
        result.scores[1], torch.tensor([0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865]),
        atol=1e-4, rtol=0)
    torch.testing.assert_close(
        result.weights[1], torch.tensor([0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581]),
        atol=1e-4, rtol=0)
    torch.testing.assert_close(result.context[1], torch.tensor([0.4419, 0.6515, 0.5683]),
                               atol=1e-4, rtol=0)
    # Book 3.3.2: first row of the full weight matrix; every row sums to 1.
    torch.testing.assert_close(
        result.weights[0], torch.tensor([0.2098, 0.2006, 0.1981, 0.1242, 0.1220, 0.1452]),
        atol=1e-4, rtol=0)
    torch.testing.assert_close(result.weights.sum(-1), torch.ones(6))


def test_simple_attention_batched_equals_unbatched():
    batched = simple_self_attention(BATCH)
    torch.testing.assert_close(batched.context[1], simple_self_attention(INPUTS).context)


def test_self_attention_v1_matches_book_3_4():
    torch.manual_seed(123)
    out = SelfAttentionV1(3, 2)(INPUTS)
    expected = torch.tensor([[0.2996, 0.8053], [0.3061, 0.8210], [0.3058, 0.8203],
                             [0.2948, 0.7939], [0.2927, 0.7891], [0.2990, 0.8040]])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_self_attention_v2_matches_book_3_4():
    torch.manual_seed(789)
    out = SelfAttentionV2(3, 2)(INPUTS)
    expected = torch.tensor([[-0.0739, 0.0713], [-0.0748, 0.0703], [-0.0749, 0.0702],
                             [-0.0760, 0.0685], [-0.0763, 0.0679], [-0.0754, 0.0693]])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_v1_with_v2_weights_gives_same_output():
    """Book exercise 3.1: nn.Linear stores W transposed, so V1 loaded with W.T matches V2."""
    v1, v2 = SelfAttentionV1(3, 2), SelfAttentionV2(3, 2)
    with torch.no_grad():
        v1.W_query.copy_(v2.W_query.weight.T)
        v1.W_key.copy_(v2.W_key.weight.T)
        v1.W_value.copy_(v2.W_value.weight.T)
    torch.testing.assert_close(v1(INPUTS), v2(INPUTS))


def test_wrapper_and_weight_split_match_book_3_6():
    torch.manual_seed(123)
    wrapper = MultiHeadAttentionWrapper(3, 2, context_length=6, dropout=0.0, num_heads=2)
    torch.testing.assert_close(wrapper(BATCH)[0, 0], torch.tensor([-0.4519, 0.2216, 0.4772, 0.1063]),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(wrapper(BATCH)[0, 5], torch.tensor([-0.5299, -0.1081, 0.5077, 0.3493]),
                               atol=1e-4, rtol=0)
    torch.manual_seed(123)
    mha = WeightSplitMultiHeadAttention(3, 2, context_length=6, dropout=0.0, num_heads=2)
    expected = torch.tensor([[0.3190, 0.4858], [0.2943, 0.3897], [0.2856, 0.3593],
                             [0.2693, 0.3873], [0.2639, 0.3928], [0.2575, 0.4028]])
    out = mha(BATCH)
    assert out.shape == (2, 6, 2)
    torch.testing.assert_close(out[0], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("module_cls", [CausalAttention, WeightSplitMultiHeadAttention])
def test_causal_mask_hides_the_future(module_cls):
    args = (8, 8, 10, 0.0) + ((2,) if module_cls is WeightSplitMultiHeadAttention else ())
    module = module_cls(*args).eval()
    x = torch.randn(1, 7, 8)
    changed = x.clone()
    changed[0, 4:] = torch.randn(3, 8)
    a, b = module(x), module(changed)
    torch.testing.assert_close(a[0, :4], b[0, :4])  # earlier outputs untouched
    assert not torch.allclose(a[0, 4:], b[0, 4:])  # the changed positions do differ


def test_causal_attention_first_token_attends_only_to_itself():
    """With the mask, token 1's context vector is exactly its own value vector (book 3.5)."""
    module = CausalAttention(3, 2, 6, 0.0)
    out = module(BATCH)
    torch.testing.assert_close(out[:, 0], module.W_value(BATCH[:, 0]))


def test_dropout_acts_only_in_training():
    module = CausalAttention(8, 8, 10, dropout=0.5)
    x = torch.randn(2, 10, 8)
    module.train()
    assert not torch.allclose(module(x), module(x))
    module.eval()
    torch.testing.assert_close(module(x), module(x))


def test_too_long_input_raises_context_length_error():
    with pytest.raises(ContextLengthError, match="context length of 6"):
        CausalAttention(3, 2, 6, 0.0)(torch.randn(1, 7, 3))


def test_weight_split_rejects_indivisible_heads():
    with pytest.raises(ConfigError, match="divisible"):
        WeightSplitMultiHeadAttention(8, 10, 4, 0.0, num_heads=3)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_weight_split_equals_fused_module(qkv_bias):
    teaching = WeightSplitMultiHeadAttention(32, 32, 16, 0.0, num_heads=4, qkv_bias=qkv_bias)
    fused = MultiHeadAttention(32, 4, 0.0, qkv_bias=qkv_bias)
    load_teaching_into_fused(teaching, fused)
    x = torch.randn(3, 16, 32)
    torch.testing.assert_close(fused(x), teaching(x), atol=1e-6, rtol=1e-5)


def test_fused_into_teaching_round_trip():
    fused = MultiHeadAttention(32, 4, 0.0, qkv_bias=True)
    teaching = load_fused_into_teaching(
        fused, WeightSplitMultiHeadAttention(32, 32, 16, 0.0, num_heads=4, qkv_bias=True))
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(teaching(x), fused(x), atol=1e-6, rtol=1e-5)
    # Rows [E, 2E) of the fused qkv weight are the key projection.
    torch.testing.assert_close(teaching.W_key.weight, fused.qkv.weight[32:64])


def test_wrapper_equals_fused_module_with_concatenated_heads():
    wrapper = MultiHeadAttentionWrapper(32, 8, 16, 0.0, num_heads=4, qkv_bias=True)
    fused = load_teaching_into_fused(wrapper, MultiHeadAttention(32, 4, 0.0, qkv_bias=True))
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(fused(x), wrapper(x), atol=1e-6, rtol=1e-5)
    back = load_fused_into_teaching(fused, MultiHeadAttentionWrapper(32, 8, 16, 0.0, 4, True))
    torch.testing.assert_close(back(x), wrapper(x))


def test_conversion_refuses_mismatches():
    fused = MultiHeadAttention(32, 4)
    with pytest.raises(ConfigError, match="n_heads=4"):
        load_teaching_into_fused(WeightSplitMultiHeadAttention(32, 32, 8, 0.0, 2), fused)
    with pytest.raises(ConfigError, match="qkv_bias=True"):
        load_teaching_into_fused(WeightSplitMultiHeadAttention(32, 32, 8, 0.0, 4, True), fused)
    with pytest.raises(ConfigError, match="identity"):  # random out_proj cannot go into a wrapper
        load_fused_into_teaching(fused, MultiHeadAttentionWrapper(32, 8, 8, 0.0, 4))
    with pytest.raises(ConfigError, match="cannot convert"):
        load_teaching_into_fused(CausalAttention(32, 32, 8, 0.0), fused)
