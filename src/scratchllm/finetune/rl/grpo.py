"""One GRPO step (Shao et al. 2024, DeepSeekMath): PPO without a value model.

Each prompt gets ``group_size`` sampled answers; an answer's advantage is its score's
standing within its group, ``(r - mean) / std``, the same for all its tokens. The loss is
PPO's clipped surrogate plus ``kl_coef`` times the k3 estimate of the KL to the reference,
inside the loss rather than in the reward. ``ppo_epochs`` is the paper's mu (updates per
batch of rollouts); with one, the ratio stays 1 and the clip never acts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from scratchllm.finetune.rl.losses import (
    group_advantages, grpo_loss, kl_penalty, kl_statistics, masked_mean,
)
from scratchllm.finetune.rl.policy import Learner, Reference, minibatches, score_before_update
from scratchllm.finetune.rl.rollout import Rollout, score_tokens
from scratchllm.finetune.rl.settings import RLSettings


def grpo_step(policy: nn.Module, reference: Reference, learner: Learner, rollout: Rollout,
              scores: torch.Tensor, settings: RLSettings, generator: torch.Generator,
              autocast: Callable) -> dict[str, float]:
    """Update the policy on ``rollout`` (``group_size`` consecutive answers per prompt)."""
    s, mask = settings, rollout.response_mask
    with autocast():
        old = score_before_update(policy, reference, rollout, s.temperature, chunk=s.minibatch)
    ref_logprobs = old["ref_logprobs"]
    old_logprobs = old["logprobs"]
    advantages = group_advantages(scores.to(mask.device, mask.dtype), s.group_size)
    kl = kl_penalty(old_logprobs, ref_logprobs, "k3") * mask
    totals = {"pg_loss": 0.0, "clipfrac": 0.0, "approx_kl": 0.0}
    updates = 0
    for index in minibatches(len(scores), s.minibatch, s.ppo_epochs, generator):
        part = rollout.select(index)
        with autocast():
            new = score_tokens(policy, part, s.temperature)
        loss, clipfrac, approx_kl, _ = grpo_loss(
            new["logprobs"], old_logprobs[index], ref_logprobs[index], advantages[index],
            mask[index], clip=s.clip, beta=s.kl_coef)
        learner.update(loss)
        for key, value in (("pg_loss", loss), ("clipfrac", clipfrac), ("approx_kl", approx_kl)):
            totals[key] += float(value.detach())
        updates += 1
    kl_per_answer = kl.sum(dim=1)
    return {**{k: v / updates for k, v in totals.items()},
            **kl_statistics(old_logprobs, ref_logprobs, mask), "kl_coef": s.kl_coef,
            "penalised_reward": float((scores.to(kl.device) - s.kl_coef * kl_per_answer).mean()),
            "entropy": float(masked_mean(old["entropy"], mask)),
            "group_std": float(scores.view(-1, s.group_size).std(dim=1).mean())}
