"""The CPU fp32 training path (feature-major feed-forward, written-out attention backward,
cheap dropout masks, the fused head loss) against a GPT forward written out plainly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.model import GPTConfig, GPTModel, feature_major
from scratchllm.model.dropout import dropout_mask
from scratchllm.model.layers import FeedForward
from scratchllm.model.loss import even_chunk_rows, next_token_loss


def _grads(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return [x.grad] + [p.grad for p in module.parameters()]


def test_feature_major_feed_forward_equals_the_plain_layers():
    torch.manual_seed(0)
    ff = FeedForward(16)
    x = torch.randn(2, 5, 16, requires_grad=True)
    assert feature_major.applies(x, ff.fc1, ff.fc2)
    out = ff(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    mine = [g.clone() for g in _grads(ff, x)]
    ff.zero_grad()
    x.grad = None
    ref = ff.fc2(F.gelu(ff.fc1(x), approximate="tanh"))  # book 4.3, token-major
    ref.backward(grad)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(mine, _grads(ff, x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_feature_major_only_for_cpu_fp32_training_of_plain_linears():
    ff = FeedForward(8)
    x = torch.randn(3, 8, requires_grad=True)
    with torch.no_grad():
        assert not feature_major.applies(x, ff.fc1, ff.fc2)  # inference: plain modules
    assert not feature_major.applies(x.double(), ff.fc1, ff.fc2)

    class Wrapped(nn.Linear):  # LoRA-style replacements keep their own forward
        pass

    assert not feature_major.applies(x, Wrapped(8, 32), ff.fc2)
    assert not feature_major.applies(x, nn.Linear(8, 32, bias=False), ff.fc2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not feature_major.applies(x, ff.fc1, ff.fc2)


def test_even_chunk_rows_splits_into_few_equal_chunks():
    assert even_chunk_rows(512, 166) == 128   # 4 chunks, not 166, 166, 166 and 14
    assert even_chunk_rows(512, 667) == 512   # one chunk when it fits
    assert even_chunk_rows(1000, 667) == 500
    assert even_chunk_rows(7, 3) == 3         # 3, 3, 1 is still three chunks
    assert even_chunk_rows(1, 166) == 1


def _plain_gpt_loss(model: GPTModel, ids: torch.Tensor, targets: torch.Tensor,
                    p: float) -> torch.Tensor:
    """The book's GPT forward (4.6) with masked-softmax attention, written with plain ops and
    ``dropout_mask`` drawn in the model's order: embeddings, then per block the attention
    weights, the attention shortcut and the feed-forward shortcut."""
    c = model.config
    b, t = ids.shape
    heads, d = c.n_heads, c.emb_dim // c.n_heads

    def drop(x):
        return x * dropout_mask(x.shape, p, dtype=x.dtype, device=x.device)

    x = drop(model.tok_emb(ids) + model.pos_emb(torch.arange(t)))
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    for block in model.trf_blocks:
        h = F.layer_norm(x, (c.emb_dim,), block.norm1.weight, block.norm1.bias, 1e-5)
        qkv = F.linear(h, block.att.qkv.weight, block.att.qkv.bias)
        q, k, v = (z.view(b, t, heads, d).transpose(1, 2) for z in qkv.split(c.emb_dim, -1))
        scores = (q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(future, float("-inf"))
        weights = drop(torch.softmax(scores, dim=-1).reshape(b * heads, t, t)).view(b, heads, t, t)
        att = (weights @ v).transpose(1, 2).reshape(b, t, c.emb_dim)
        x = x + drop(att @ block.att.out_proj.weight.T + block.att.out_proj.bias)
        h = F.layer_norm(x, (c.emb_dim,), block.norm2.weight, block.norm2.bias, 1e-5)
        hidden = F.gelu(h @ block.ff.fc1.weight.T + block.ff.fc1.bias, approximate="tanh")
        x = x + drop(hidden @ block.ff.fc2.weight.T + block.ff.fc2.bias)
    x = F.layer_norm(x, (c.emb_dim,), model.final_norm.weight, model.final_norm.bias, 1e-5)
    return F.cross_entropy((x @ model.out_head.weight.T).flatten(0, 1), targets.flatten())


@pytest.mark.parametrize("p, qkv_bias", [(0.1, False), (0.1, True), (0.0, False)])
def test_gpt_training_step_equals_the_plain_formula(p, qkv_bias):
    """Loss and every gradient of a training step equal the plain forward's with the same
    dropout masks (same seed): what the fast path changes is speed, not maths."""
    torch.manual_seed(4)
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=97, context_length=16,
                                      drop_rate=p, qkv_bias=qkv_bias)).train()
    ids = torch.randint(0, 97, (2, 12))
    targets = torch.randint(0, 97, (2, 12))
    torch.manual_seed(11)
    loss = next_token_loss(model, ids, targets)
    loss.backward()
    mine = {n: q.grad.clone() for n, q in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(11)
    ref = _plain_gpt_loss(model, ids, targets, p)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for name, q in model.named_parameters():
        torch.testing.assert_close(mine[name], q.grad, rtol=1e-4, atol=1e-6, msg=name)
