"""The settings of a PPO or GRPO run, checked once before any model is loaded."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from scratchllm.errors import ConfigError
from scratchllm.finetune.rl.losses import KL_ESTIMATORS

ALGORITHMS = ("ppo", "grpo")


@dataclass
class RLSettings:
    """Defaults are small-model PPO defaults (InstructGPT / TRL) and DeepSeekMath's GRPO.

    ``rollout_batch`` counts prompts per step; GRPO samples ``group_size`` answers to each, so
    a GRPO step has ``rollout_batch * group_size`` rollouts. ``minibatch`` counts rollouts per
    gradient step, ``ppo_epochs`` passes over each step's rollouts (GRPO's mu).
    """

    algorithm: str = "ppo"
    max_steps: int = 100
    rollout_batch: int = 8
    group_size: int = 4               # GRPO only
    minibatch: int = 4
    ppo_epochs: int = 4
    lr: float = 1e-5
    weight_decay: float = 0.0
    temperature: float = 1.0
    max_new_tokens: int = 64
    kl_coef: float = 0.05             # beta (GRPO: the weight of its k3 term)
    kl_target: float | None = None    # PPO: adaptive coefficient aiming at this KL (nats/answer)
    kl_horizon: int = 10000
    kl_estimator: str = "k1"          # PPO's per-token penalty; GRPO always uses k3
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    missing_eos_penalty: float = 1.0  # subtracted from the score of an answer with no end token
    grad_clip: float | None = 1.0
    seed: int = 123
    save_every: int = 0
    keep_last: int = 3
    stop_at: int | None = None        # stop (and checkpoint) after this many steps

    def check(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {self.algorithm!r}; use ppo or grpo")
        for name in ("max_steps", "rollout_batch", "minibatch", "ppo_epochs", "max_new_tokens",
                     "kl_horizon", "keep_last", "group_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.algorithm == "grpo" and self.group_size < 2:
            raise ConfigError(f"GRPO compares answers within a group: --group-size must be at "
                              f"least 2, got {self.group_size}")
        if self.rollouts_per_step % self.minibatch:
            raise ConfigError(f"--minibatch {self.minibatch} must divide the "
                              f"{self.rollouts_per_step} rollouts of a step (--rollout-batch"
                              f"{' x --group-size' if self.algorithm == 'grpo' else ''})")
        if isinstance(self.save_every, bool) or not isinstance(self.save_every, int) \
                or self.save_every < 0:
            raise ConfigError(f"save_every must be a non-negative integer, got {self.save_every!r}")
        positive = {"lr": self.lr, "temperature": self.temperature, "clip": self.clip,
                    "value_clip": self.value_clip}
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        for name in ("kl_coef", "weight_decay", "vf_coef", "missing_eos_penalty"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"gamma and lambda must lie in [0, 1], got {self.gamma} and "
                              f"{self.lam}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"unknown KL estimator {self.kl_estimator!r}; use k1 or k3")
        if self.kl_target is not None and not self.kl_target > 0:
            raise ConfigError(f"kl_target must be > 0 (or omitted for a fixed coefficient), got "
                              f"{self.kl_target!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be > 0 (or omitted), got {self.grad_clip!r}")

    @property
    def rollouts_per_step(self) -> int:
        return self.rollout_batch * (self.group_size if self.algorithm == "grpo" else 1)

    def recipe(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (not how long it runs)."""
        skip = {"max_steps", "save_every", "keep_last", "stop_at"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
