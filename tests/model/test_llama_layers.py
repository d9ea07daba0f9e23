"""RMSNorm, SwiGLU and grouped-query attention against hand-computed and MHA references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scratchllm.model import GroupedQueryAttention, MultiHeadAttention, RMSNorm, SwiGLU
from scratchllm.model.rope import compute_rope_frequencies


def test_rmsnorm_by_hand():
    norm = RMSNorm(2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0]))
    rms = math.sqrt((3**2 + 4**2) / 2)
    out = norm(torch.tensor([[3.0, 4.0]]))
    assert out.tolist()[0] == pytest.approx([3 / rms, 2 * 4 / rms], rel=1e-6)


def test_rmsnorm_keeps_the_mean_unlike_layernorm():
    x = torch.randn(4, 16) + 5.0
    out = RMSNorm(16, eps=1e-6)(x)
    assert out.pow(2).mean(-1).tolist() == pytest.approx([1.0] * 4, rel=1e-4)
    assert (out.mean(-1) > 0.5).all()  # not centred


def test_rmsnorm_bfloat16_normalizes_in_float32():
    x = torch.randn(3, 32) * 100
    norm = RMSNorm(32).to(torch.bfloat16)
    out = norm(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    x16 = x.to(torch.bfloat16).float()
    expected = (x16 * torch.rsqrt(x16.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    assert torch.equal(out, expected)


def test_swiglu_by_formula():
    ff = SwiGLU(8, 12)
    x = torch.randn(2, 5, 8)
    gate, up = x @ ff.fc1.weight.T, x @ ff.fc2.weight.T
    expected = (gate * torch.sigmoid(gate) * up) @ ff.fc3.weight.T
    torch.testing.assert_close(ff(x), expected)
    assert ff.fc1.bias is None and ff.fc3.bias is None


def _no_rotation(n_tokens: int, head_dim: int):
    return torch.ones(n_tokens, head_dim), torch.zeros(n_tokens, head_dim)


def test_gqa_with_one_kv_head_per_query_head_is_multi_head_attention():
    mha = MultiHeadAttention(32, 4, qkv_bias=True).eval()
    gqa = GroupedQueryAttention(32, 4, 4, 8, bias=True)
    with torch.no_grad():
        for i, proj in enumerate((gqa.W_query, gqa.W_key, gqa.W_value)):
            proj.weight.copy_(mha.qkv.weight[32 * i: 32 * (i + 1)])
            proj.bias.copy_(mha.qkv.bias[32 * i: 32 * (i + 1)])
        gqa.out_proj.load_state_dict(mha.out_proj.state_dict())
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(gqa(x, *_no_rotation(7, 8)), mha(x))


def test_gqa_equals_mha_with_each_kv_head_repeated_for_its_group():
    """Query head h must use key/value head h // (n_heads / n_kv_groups)."""
    torch.manual_seed(1)
    gqa = GroupedQueryAttention(32, 4, 2, 8)
    mha = GroupedQueryAttention(32, 4, 4, 8)
    with torch.no_grad():
        mha.W_query.weight.copy_(gqa.W_query.weight)
        for name in ("W_key", "W_value"):
            heads = getattr(gqa, name).weight.view(2, 8, 32)
            getattr(mha, name).weight.copy_(heads.repeat_interleave(2, dim=0).reshape(32, 32))
        mha.out_proj.weight.copy_(gqa.out_proj.weight)
    cos, sin = compute_rope_frequencies(8, 10_000.0, 16)
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(gqa(x, cos[:9], sin[:9]), mha(x, cos[:9], sin[:9]))


def test_gqa_by_hand_with_explicit_softmax():
    torch.manual_seed(2)
    att = GroupedQueryAttention(16, 2, 1, 8, qk_norm=True)
    cos, sin = compute_rope_frequencies(8, 10_000.0, 8)
    x = torch.randn(1, 5, 16)
    from scratchllm.model.rope import apply_rope
    q = att.q_norm(att.W_query(x).view(1, 5, 2, 8)).transpose(1, 2)
    k = att.k_norm(att.W_key(x).view(1, 5, 1, 8)).transpose(1, 2)
    v = att.W_value(x).view(1, 5, 1, 8).transpose(1, 2)
    q, k = apply_rope(q, cos[:5], sin[:5]), apply_rope(k, cos[:5], sin[:5])
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)  # k broadcasts over both query heads
    scores = scores.masked_fill(torch.triu(torch.ones(5, 5, dtype=torch.bool), 1), -math.inf)
    out = (F.softmax(scores, -1) @ v).transpose(1, 2).reshape(1, 5, 16)
    torch.testing.assert_close(att(x, cos[:5], sin[:5]), att.out_proj(out))


def test_kv_cache_stores_only_the_kv_heads():
    from scratchllm.model import KVCache
    att = GroupedQueryAttention(32, 4, 2, 8)
    cache = KVCache(1, 16)
    cos, sin = compute_rope_frequencies(8, 10_000.0, 16)
    att(torch.randn(3, 5, 32), cos[:5], sin[:5], cache=cache)
    cache.advance(5)  # the model does this once per forward pass
    keys, values = cache.update(0, torch.zeros(3, 2, 0, 8), torch.zeros(3, 2, 0, 8))
    assert keys.shape == (3, 2, 5, 8) and values.shape == (3, 2, 5, 8)
