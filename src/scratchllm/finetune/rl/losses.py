"""The arithmetic of RLHF (book ch. 8) as pure functions on tensors: no model, no state.

Shapes: per-token quantities are (B, T) over the response tokens of B rollouts, with a 0/1
``mask`` marking the tokens that exist (the response and its end token; right padding is 0).
Per-sequence quantities are (B,).

* KL estimators (Schulman, "Approximating KL divergence", 2020), from samples of the policy:
  with d = log pi_ref(y) - log pi(y), ``k1 = -d`` is unbiased but often negative per sample;
  ``k3 = exp(d) - d - 1`` is unbiased too and never negative (exp(d) >= 1 + d).
* GAE (Schulman et al. 2016): advantages from per-token rewards and values, gamma and lambda.
* PPO's clipped policy and value losses (Schulman et al. 2017) and the statistics logged with
  them (clip fraction, approximate KL between the rollout policy and the updated one).
* GRPO (Shao et al. 2024, DeepSeekMath): advantages normalised within each group of answers
  to the same prompt, and its loss with the k3 KL term to the reference model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scratchllm.errors import ConfigError

KL_ESTIMATORS = ("k1", "k3")


# ---------------------------------------------------------------------------- masked statistics
def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over everything, or along ``dim``)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: Tensor, mask: Tensor) -> Tensor:
    """Variance (population: divided by n) of the masked entries."""
    mean = masked_mean(values, mask)
    return masked_mean((values - mean) ** 2, mask)


def whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Scale the masked entries to mean 0 (unless ``shift_mean=False``) and variance 1.

    Advantages are whitened over the whole rollout batch so one learning rate suits every
    reward scale; masked entries come out as 0, so padding never enters a loss.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(values.dtype)


# ---------------------------------------------------------------------------- KL to the reference
def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi."""
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ConfigError(f"unknown KL estimator {estimator!r}; use one of {', '.join(KL_ESTIMATORS)}")


LOGGED_KL = "k3"  # the estimator of the logged ``kl``, whatever the penalty uses


def kl_statistics(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """The KL to the reference per answer (nats; summed over its tokens, averaged over the
    answers) as every PPO and GRPO step logs it: ``kl`` by k3 and ``kl_k1`` by k1.

    One estimator for ``kl`` in both algorithms, whatever their penalties use, so curves
    compare across runs; k3 because it is never negative and varies less while the policy
    is near the reference. Both estimate the same KL (both unbiased): a large gap between
    them says the sample is too small to trust either.
    """
    k3 = (kl_penalty(logprobs, ref_logprobs, LOGGED_KL) * mask).sum(dim=1)
    k1 = (kl_penalty(logprobs, ref_logprobs, "k1") * mask).sum(dim=1)
    return {"kl": float(k3.mean()), "kl_k1": float(k1.mean())}


class AdaptiveKLController:
    """The KL coefficient of Ziegler et al. (2019): nudged so the KL tracks ``target``.

    After each step, ``coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon`` with
    ``n`` the rollouts of that step. With ``target=None`` the coefficient stays fixed.
    """

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10000) -> None:
        self.coef, self.target, self.horizon = float(coef), target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef = float(state["coef"])


# ---------------------------------------------------------------------------- advantages
def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """(advantages, returns) by generalised advantage estimation, backwards over the tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``,
    where V and A past a sequence's last real token are 0 (the episode ended there).
    Returns are ``A + V``, the value head's regression target. Masked entries are 0.
    """
    mask = mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = advantage
        next_value = values[:, t] * mask[:, t]
        next_advantage = advantage
    returns = (advantages + values) * mask
    return advantages, returns


def group_advantages(scores: Tensor, group_size: int, eps: float = 1e-4) -> Tensor:
    """GRPO: each score minus its group's mean, over the group's standard deviation.

    ``scores`` (N * G,) holds G consecutive answers per prompt. The sample standard deviation
    (n - 1) is used; a group whose answers all score alike gets advantages of 0.
    """
    if group_size < 2 or scores.numel() % group_size:
        raise ConfigError(f"GRPO needs groups of at least 2 answers that divide the batch; got "
                          f"group size {group_size} for {scores.numel()} answers")
    groups = scores.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)
    return ((groups - mean) / (std + eps)).flatten()


# ---------------------------------------------------------------------------- losses
def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
                clip: float = 0.2) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate: (loss, clip fraction, approximate KL); the last two detached.

    ``loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))`` over masked tokens.
    The clip fraction is the share of tokens where the clipped term won; the approximate KL
    of the rollout policy to the updated one is k3's mean, ``(ratio - 1) - log ratio``.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return loss, clipfrac, approx_kl


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *,
               clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """PPO's clipped value loss: (loss, clip fraction).

    The new value may move at most ``clip`` from the rollout's; the loss is half the larger
    of the squared errors of the moved and the clipped value (a pessimistic bound, as for the
    policy).
    """
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_err > unclipped_err).to(values.dtype), mask)
    return loss, clipfrac


def grpo_loss(logprobs: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor, advantages: Tensor,
              mask: Tensor, *, clip: float = 0.2, beta: float = 0.04
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """GRPO's objective, negated: (loss, clip fraction, approximate KL, mean k3 KL).

    Per token: the clipped surrogate with the answer's advantage ``A_i`` (one per sequence,
    (B,)), plus ``beta * k3(pi, pi_ref)``. As in the paper each answer's tokens are averaged
    first, then the answers, so long and short answers weigh the same.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(1)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    kl = kl_penalty(logprobs, ref_logprobs, "k3")
    per_token = torch.maximum(unclipped, clipped) + beta * kl
    loss = masked_mean(per_token, mask, dim=1).mean()
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        mean_kl = masked_mean(kl, mask)
    return loss, clipfrac, approx_kl, mean_kl


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of each row's softmax distribution: (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
