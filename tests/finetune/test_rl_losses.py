"""RL losses against hand-computed values and independent references (book ch. 8)."""

from __future__ import annotations

import math

import pytest
import torch

from scratchllm.errors import ConfigError
from scratchllm.finetune.rl.losses import (
    AdaptiveKLController, entropy_from_logits, gae, group_advantages, grpo_loss, kl_penalty,
    masked_mean, policy_loss, value_loss, whiten,
)


def test_k1_and_k3_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    # d = ref - logp = (-0.5, 1): k3 = e^d - d - 1
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx(
        [math.exp(-0.5) + 0.5 - 1, math.e - 2])
    with pytest.raises(ConfigError, match="k1"):
        kl_penalty(logp, ref, "k2")


def test_k3_is_never_negative_and_zero_only_at_equality():
    torch.manual_seed(0)
    logp, ref = torch.randn(1000) * 3, torch.randn(1000) * 3
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k1") < 0).any()  # k1 per sample can be negative
    assert kl_penalty(logp, logp, "k3").abs().max() == 0


def test_both_estimators_average_to_the_true_kl():
    """Sampled from p, E[k1] = E[k3] = KL(p || q) (torch.distributions as the reference)."""
    gen = torch.Generator().manual_seed(0)
    p = torch.distributions.Categorical(logits=torch.tensor([2.0, 0.5, -1.0, 0.0]))
    q = torch.distributions.Categorical(logits=torch.tensor([1.0, 1.0, 0.0, -0.5]))
    exact = float(torch.distributions.kl_divergence(p, q))
    draws = torch.multinomial(p.probs, 200_000, replacement=True, generator=gen)
    logp, logq = p.log_prob(draws), q.log_prob(draws)
    for estimator in ("k1", "k3"):
        assert float(kl_penalty(logp, logq, estimator).mean()) == pytest.approx(exact, abs=0.01)


def test_gae_by_hand_with_a_masked_tail():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [1.0, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: d2 = 1 - .3 = .7; d1 = .9*.3 - .4 = -.13; d0 = .9*.4 - .5 = -.14; gl = .72
    a2, a1 = 0.7, -0.13 + 0.72 * 0.7
    a0 = -0.14 + 0.72 * a1
    # row 1 ends at t=1 (its reward 5 and value 9 are padding): d1 = 2 - .5; d0 = .9*.5 - 1
    b1 = 1.5
    b0 = -0.55 + 0.72 * b1
    assert adv.tolist() == [pytest.approx([a0, a1, a2]), pytest.approx([b0, b1, 0.0])]
    assert ret.tolist() == [pytest.approx([a0 + 0.5, a1 + 0.4, a2 + 0.3]),
                            pytest.approx([b0 + 1.0, b1 + 0.5, 0.0])]


def test_gae_equals_the_discounted_sum_of_td_errors():
    """A_t = sum_l (gamma lam)^l delta_{t+l}, written out directly."""
    torch.manual_seed(1)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    lengths = [6, 4, 1]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    gamma, lam = 0.95, 0.9
    adv, _ = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for row, n in enumerate(lengths):
        v = values[row, :n].tolist() + [0.0]
        deltas = [rewards[row, t].item() + gamma * v[t + 1] - v[t] for t in range(n)]
        expected = [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]
        assert adv[row, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert adv[row, n:].abs().sum() == 0


def test_whiten_uses_only_masked_entries():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -50.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = whiten(values, mask)
    # the four real entries: mean 2.5, population variance 1.25
    expected = [(x - 2.5) / math.sqrt(1.25) for x in (1, 2, 3, 4)]
    assert out[0].tolist() + out[1, :1].tolist() == pytest.approx(expected, abs=1e-6)
    assert out[1, 1:].tolist() == [0.0, 0.0]
    assert float(masked_mean(out, mask)) == pytest.approx(0.0, abs=1e-6)
    kept = whiten(values, mask, shift_mean=False)
    assert float(masked_mean(kept, mask)) == pytest.approx(2.5, abs=1e-6)


def test_clipped_policy_loss_by_hand():
    ratio = torch.tensor([[1.5, 0.5, 1.1]])
    old = torch.zeros(1, 3)
    logp = ratio.log().requires_grad_()
    adv, mask = torch.tensor([[1.0, -1.0, 2.0]]), torch.ones(1, 3)
    loss, clipfrac, approx_kl = policy_loss(logp, old, adv, mask, clip=0.2)
    # max(-A r, -A clip(r)): (-1.5, -1.2) -> -1.2 clipped; (.5, .8) -> .8 clipped; -2.2 either
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)]
    assert approx_kl.item() == pytest.approx(sum(k3) / 3)
    loss.backward()
    # clipped tokens pass no gradient; the third gets d(-A r)/dlogp / 3 = -A r / 3
    assert logp.grad.tolist() == [pytest.approx([0.0, 0.0, -2.0 * 1.1 / 3])]


def test_policy_loss_ignores_masked_tokens():
    logp, old = torch.tensor([[0.1, 5.0]]), torch.zeros(1, 2)
    adv = torch.tensor([[1.0, 100.0]])
    loss, clipfrac, _ = policy_loss(logp, old, adv, torch.tensor([[1, 0]]), clip=0.2)
    assert loss.item() == pytest.approx(-math.exp(0.1))
    assert clipfrac.item() == 0.0


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.4]])
    old, returns = torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, -1.0]])
    loss, clipfrac = value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 1: clipped to .7, errors 1 vs 1.69 -> 1.69; token 2 inside the clip: 1.96
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.96) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), 3, eps=0.0)
    assert adv[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0])  # sample std of 1,2,3 is 1
    safe = group_advantages(torch.tensor([5.0, 5.0]), 2)
    assert safe.tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError, match="group"):
        group_advantages(torch.ones(5), 2)


def test_grpo_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    old = logp.detach().clone()
    ref = torch.tensor([[-1.0, -1.5], [-1.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([2.0, -1.0])
    loss, clipfrac, approx_kl, mean_kl = grpo_loss(logp, old, ref, adv, mask, clip=0.2, beta=0.1)
    k3 = lambda d: math.exp(d) - d - 1  # noqa: E731  d = ref - logp
    first = (-2.0 + 0.1 * k3(0.0) - 2.0 + 0.1 * k3(0.5)) / 2   # ratio 1: surrogate -A
    second = 1.0 + 0.1 * k3(-0.5)                              # its padded token ignored
    assert loss.item() == pytest.approx((first + second) / 2)
    assert clipfrac.item() == 0.0 and approx_kl.item() == pytest.approx(0.0, abs=1e-7)
    assert mean_kl.item() == pytest.approx((k3(0.0) + k3(0.5) + k3(-0.5)) / 3)
    loss.backward()
    # d/dlogp [-A r + beta k3] at r = 1: -A + beta (1 - e^d), per answer's token count, / 2
    grad = lambda a, d, n: (-a + 0.1 * (1 - math.exp(d))) / n / 2  # noqa: E731
    assert logp.grad.tolist() == [pytest.approx([grad(2, 0.0, 2), grad(2, 0.5, 2)]),
                                  pytest.approx([grad(-1, -0.5, 1), 0.0])]


def test_adaptive_kl_controller():
    fixed = AdaptiveKLController(0.1)
    fixed.update(50.0, 100)
    assert fixed.coef == 0.1
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, 100)                   # error clipped to +0.2
    assert ctl.coef == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    ctl.update(5.4, 100)                    # error -0.1
    assert ctl.coef == pytest.approx(0.1 * 1.002 * (1 - 0.1 * 100 / 10000))
    again = AdaptiveKLController(1.0, target=6.0)
    again.load_state_dict(ctl.state_dict())
    assert again.coef == ctl.coef


def test_entropy_of_uniform_and_peaked_rows():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    assert entropy_from_logits(logits).tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)
