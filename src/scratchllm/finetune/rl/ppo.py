"""One PPO step on one batch of rollouts (InstructGPT's RLHF recipe, book ch. 8).

1. Score the rollout's tokens once, before any update: the policy's log-probs and values
   ("old"), the reference's log-probs.
2. Per-token reward: ``-kl_coef * KL_t`` (k1 or k3 estimate of the KL to the reference) on
   every response token, plus the answer's score on its last token (the end token, or the
   last one sampled when the answer never ended, whose score carries the missing-end
   penalty).
3. GAE advantages and returns, advantages whitened over the batch.
4. ``ppo_epochs`` shuffled passes over minibatches: the clipped policy loss plus ``vf_coef``
   times the clipped value loss, one optimizer step per minibatch.

The logged ``kl`` is the k3 estimate whatever ``kl_estimator`` the penalty uses (``kl_k1``
the k1 one; ``losses.kl_statistics``), and the adaptive coefficient tracks that ``kl``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from scratchllm.finetune.rl.losses import (
    AdaptiveKLController, gae, kl_penalty, kl_statistics, masked_mean, policy_loss, value_loss,
    whiten,
)
from scratchllm.finetune.rl.policy import Learner, Reference, minibatches, score_before_update
from scratchllm.finetune.rl.rollout import Rollout, score_tokens
from scratchllm.finetune.rl.settings import RLSettings


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """(B, R) rewards: ``-kl_coef * kl`` per token and each score added at its last token."""
    rewards = -kl_coef * kl * mask
    last = mask.sum(dim=1).long().clamp(min=1) - 1
    rows = torch.arange(len(scores), device=rewards.device)
    rewards[rows, last] += scores.to(rewards.device, rewards.dtype)
    return rewards


def ppo_step(policy: nn.Module, value_head: nn.Module, reference: Reference, learner: Learner,
             rollout: Rollout, scores: torch.Tensor, settings: RLSettings,
             kl_ctl: AdaptiveKLController, generator: torch.Generator,
             autocast: Callable) -> dict[str, float]:
    """Update the policy and value head on ``rollout`` (scores (B,) with any penalty applied);
    return the step's statistics."""
    s, mask = settings, rollout.response_mask
    with autocast():
        old = score_before_update(policy, reference, rollout, s.temperature,
                                  value_head=value_head, chunk=s.minibatch)
    ref_logprobs = old["ref_logprobs"]
    old_logprobs, old_values = old["logprobs"], old["values"] * mask
    kl = kl_penalty(old_logprobs, ref_logprobs, s.kl_estimator) * mask
    coef = kl_ctl.coef
    rewards = token_rewards(scores, kl, mask, coef)
    advantages, returns = gae(rewards, old_values, mask, gamma=s.gamma, lam=s.lam)
    advantages = whiten(advantages, mask)
    totals = {"pg_loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0, "value_clipfrac": 0.0,
              "approx_kl": 0.0}
    updates = 0
    for index in minibatches(len(scores), s.minibatch, s.ppo_epochs, generator):
        part = rollout.select(index)
        with autocast():
            new = score_tokens(policy, part, s.temperature, value_head=value_head)
        pg, clipfrac, approx_kl = policy_loss(new["logprobs"], old_logprobs[index],
                                              advantages[index], mask[index], clip=s.clip)
        vf, vf_clipfrac = value_loss(new["values"], old_values[index], returns[index],
                                     mask[index], clip=s.value_clip)
        learner.update(pg + s.vf_coef * vf)
        for key, value in (("pg_loss", pg), ("value_loss", vf), ("clipfrac", clipfrac),
                           ("value_clipfrac", vf_clipfrac), ("approx_kl", approx_kl)):
            totals[key] += float(value.detach())
        updates += 1
    logged = kl_statistics(old_logprobs, ref_logprobs, mask)
    kl_ctl.update(logged["kl"], len(scores))  # --kl-target is in the units of the logged kl
    return {**{k: v / updates for k, v in totals.items()},
            **logged, "kl_coef": coef,
            "penalised_reward": float(rewards.sum(dim=1).mean()),
            "entropy": float(masked_mean(old["entropy"], mask)),
            "value_mean": float(masked_mean(old_values, mask)),
            "advantage_std": float(masked_mean(advantages ** 2, mask).sqrt())}
