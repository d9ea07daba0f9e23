"""The CPU dropout mask (model.dropout) and the written-out attention with dropout it feeds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.attention import causal_attention_with_dropout
from scratchllm.model.dropout import Dropout, dropout, dropout_mask, keep_mask, keep_threshold


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_keeps_1_minus_p_and_scales_survivors(p):
    torch.manual_seed(0)
    n = 200_000
    mask = dropout_mask((n,), p, dtype=torch.float32, device=torch.device("cpu"))
    kept = mask != 0
    # 16 random bits per element: the keep probability q is 1 - p on a 2^-16 grid
    q = keep_threshold(p) / 2 ** 16
    assert abs(q - (1 - p)) <= 2 ** -17
    assert mask.unique().tolist() == [0.0, pytest.approx(1 / q, rel=1e-7)]
    # binomial: the kept fraction is within 5 standard deviations of q
    assert abs(kept.float().mean().item() - q) < 5 * math.sqrt(p * (1 - p) / n)
    # survivors are scaled so the expected output is the input, as in F.dropout
    x = torch.full((n,), 3.0)
    assert dropout(x, p).mean().item() == pytest.approx(3.0, rel=5 * math.sqrt(p / (1 - p) / n))


def test_mask_elements_are_independent_of_their_neighbours():
    """Four elements share one 64-bit word of the generator: neighbours must still be
    independent (a pair is kept with probability q^2) and every lane keeps q."""
    torch.manual_seed(3)
    n, p = 400_000, 0.5
    mask, scale = keep_mask((n // 4, 4), p)
    assert mask.unique().tolist() == [0.0, 1.0]
    keep = mask.bool()
    q = keep_threshold(p) / 2 ** 16
    sd = math.sqrt(q * (1 - q) / (n // 4))
    for lane in range(4):
        assert abs(keep[:, lane].float().mean().item() - q) < 5 * sd
    pairs = (keep[:, 0] & keep[:, 1]).float().mean().item()
    assert abs(pairs - q * q) < 5 * math.sqrt(q * q * (1 - q * q) / (n // 4))
    across = (keep[:-1, 3] & keep[1:, 0]).float().mean().item()  # last lane, next word
    assert abs(across - q * q) < 5 * math.sqrt(q * q * (1 - q * q) / (n // 4))
    assert scale == 2 ** 16 / keep_threshold(p)


def test_mask_drops_nothing_and_everything_at_the_ends():
    cpu = torch.device("cpu")
    assert torch.equal(dropout_mask((1000,), 1e-12, dtype=torch.float32, device=cpu),
                       torch.ones(1000))
    x = torch.randn(50)
    assert torch.equal(dropout(x, 1.0), torch.zeros(50))  # F.dropout's p = 1
    assert dropout(x, 0.0) is x and dropout(x, 0.5, training=False) is x


def test_same_seed_same_mask_and_the_generator_state_decides_it():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = dropout(torch.ones(4096), 0.3)
    torch.set_rng_state(state)  # what a resumed checkpoint does
    b = dropout(torch.ones(4096), 0.3)
    assert torch.equal(a, b)
    assert not torch.equal(a, dropout(torch.ones(4096), 0.3))


def test_gradient_uses_the_forward_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    out = dropout(x, 0.25)
    out.backward(torch.ones_like(out))
    expected = torch.where(out != 0, 1 / 0.75, 0.0)  # x is never exactly 0 here
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


def test_module_is_an_nn_dropout_and_respects_eval():
    module = Dropout(0.4)
    assert isinstance(module, nn.Dropout) and module.p == 0.4
    x = torch.randn(100)
    assert torch.equal(module.eval()(x), x)
    assert (module.train()(x) == 0).any()


def _reference_attention(q, k, v, mask):
    """softmax(Q K^T / sqrt(D) + causal) * dropout mask, times V: book 3.5 written plainly."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    t = q.shape[-2]
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return (torch.softmax(scores, dim=-1) * mask) @ v


def test_attention_with_dropout_equals_the_plain_formula_values_and_gradients():
    torch.manual_seed(2)
    b, h, t, d = 2, 3, 7, 4
    inputs = [torch.randn(b, h, t, d, requires_grad=True) for _ in range(3)]
    torch.manual_seed(9)
    out = causal_attention_with_dropout(*inputs, 0.2)
    torch.manual_seed(9)  # the same draw: the mask the function used
    mask = dropout_mask((b * h, t, t), 0.2, dtype=torch.float32,
                        device=torch.device("cpu")).view(b, h, t, t)
    ref_inputs = [x.detach().clone().requires_grad_() for x in inputs]
    ref = _reference_attention(*ref_inputs, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for mine, theirs in zip(inputs, ref_inputs):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_attention_is_computed_in_fp32_with_the_same_mask(dtype):
    """Under autocast the queries arrive in bf16/fp16: attended in fp32 (as SDPA's CPU math
    path does), cast back, gradients returned in the inputs' dtype."""
    torch.manual_seed(3)
    b, h, t, d = 2, 3, 7, 4
    inputs = [torch.randn(b, h, t, d).to(dtype).requires_grad_() for _ in range(3)]
    torch.manual_seed(9)
    with torch.autocast("cpu", dtype=dtype):
        out = causal_attention_with_dropout(*inputs, 0.2)
    assert out.dtype == dtype
    torch.manual_seed(9)
    mask = dropout_mask((b * h, t, t), 0.2, dtype=torch.float32,
                        device=torch.device("cpu")).view(b, h, t, t)
    ref_inputs = [x.detach().float().requires_grad_() for x in inputs]
    ref = _reference_attention(*ref_inputs, mask)
    torch.testing.assert_close(out, ref.to(dtype))
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad.to(dtype).float())
    for mine, theirs in zip(inputs, ref_inputs):
        assert mine.grad.dtype == dtype
        torch.testing.assert_close(mine.grad, theirs.grad.to(dtype))


def test_gpt_bf16_autocast_training_takes_the_written_out_attention(monkeypatch):
    import scratchllm.model.attention as attention

    calls = []
    real = attention.causal_attention_with_dropout
    monkeypatch.setattr(attention, "causal_attention_with_dropout",
                        lambda q, *a: calls.append(q.dtype) or real(q, *a))
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=100, drop_rate=0.1)).train()
    ids = torch.randint(0, 100, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids).float().sum().backward()
    assert calls == [torch.bfloat16] * model.config.n_layers
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_attention_with_no_dropout_equals_sdpa():
    q, k, v = torch.randn(3, 2, 4, 16, 8).unbind(0)
    torch.testing.assert_close(causal_attention_with_dropout(q, k, v, 1e-12),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               rtol=1e-5, atol=1e-6)


def test_gpt_training_forward_takes_the_written_out_attention(monkeypatch):
    import scratchllm.model.attention as attention

    calls = []
    real = attention.projected_causal_attention
    monkeypatch.setattr(attention, "projected_causal_attention",
                        lambda *a: calls.append(a[-1]) or real(*a))
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=100, drop_rate=0.1))
    ids = torch.randint(0, 100, (2, 9))
    model.train()(ids)
    assert calls == [0.1] * model.config.n_layers
    calls.clear()
    model.eval()(ids)  # inference keeps SDPA's fast path
    with torch.no_grad():
        model.train()(ids)  # no gradients: the plain projection
    assert calls == []


@pytest.mark.parametrize("bias", [False, True])
def test_projected_attention_equals_projection_then_plain_formula(bias):
    from scratchllm.model.causal_attention import projected_causal_attention

    torch.manual_seed(6)
    b, t, heads, d = 2, 7, 3, 4
    qkv = nn.Linear(heads * d, 3 * heads * d, bias=bias)
    x = torch.randn(b, t, heads * d, requires_grad=True)
    torch.manual_seed(9)
    out = projected_causal_attention(x, qkv, heads, 0.2)
    torch.manual_seed(9)
    mask = dropout_mask((b * heads, t, t), 0.2, dtype=torch.float32,
                        device=torch.device("cpu")).view(b, heads, t, t)
    x_ref = x.detach().clone().requires_grad_()
    q, k, v = (z.view(b, t, heads, d).transpose(1, 2)
               for z in qkv(x_ref).split(heads * d, dim=-1))
    ref = _reference_attention(q, k, v, mask).transpose(1, 2).reshape(b, t, heads * d)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    mine = torch.autograd.grad(out, [x, *qkv.parameters()], grad)
    theirs = torch.autograd.grad(ref, [x_ref, *qkv.parameters()], grad)
    for a, c in zip(mine, theirs):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
