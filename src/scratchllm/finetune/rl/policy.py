"""The trained side of RL: the policy's value head, its frozen reference, and its optimizer.

Value head (PPO only): a scalar ``Linear(emb_dim, 1)`` on the policy's own final hidden
states (the output of ``final_norm``, which the vocabulary head reads), initialised to
zero: every value starts at 0, so the first advantages are the rewards-to-go themselves,
and no reward model's head is assumed to share the policy's backbone. Sharing the backbone
costs no second model; the value loss is scaled by ``vf_coef`` so it does not swamp the
policy's gradient in the shared weights (or, with LoRA, in the shared adapters).

Reference: the policy as it was before RL. For full fine-tuning it is a frozen deep copy;
with LoRA it is the policy itself with its adapters switched off (the base weights never
change, so no second copy of the model is needed).

Dropout is off in every forward pass (policy, reference, value): the ratio of new to old
log-probs must be exactly 1 before the first update, and the KL to the reference exactly 0
while the two are the same model (the argument ``finetune.dpo`` makes for DPO).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn

from scratchllm.finetune.rl.rollout import Rollout, score_tokens
from scratchllm.model.lora import lora_layers
from scratchllm.train.optim import build_scheduler
from scratchllm.train.steps import optimizer_step


class ValueHead(nn.Linear):
    """V(s) = w . h + b on the final hidden state h; w and b start at zero."""

    def __init__(self, emb_dim: int, *, device=None, dtype=None) -> None:
        super().__init__(emb_dim, 1, device=device, dtype=dtype)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden.to(self.weight.dtype))


def emb_dim_of(model: nn.Module) -> int:
    return int(model.final_norm.weight.shape[0])


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base: every LoRA layer's update scaled by 0 for the duration.

    ``base(x) + 0 * update`` is exactly ``base(x)`` for finite updates, so the reference
    log-probs equal the base model's bit for bit.
    """
    layers = list(lora_layers(model).values())
    saved = [layer.scaling for layer in layers]
    try:
        for layer in layers:
            layer.scaling = 0.0
        yield model
    finally:
        for layer, scaling in zip(layers, saved):
            layer.scaling = scaling


def frozen_copy(model: nn.Module) -> nn.Module:
    """The policy as it is now, in eval mode, never updated."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


class Reference:
    """Log-probs under the policy before RL (see the module docstring)."""

    def __init__(self, policy: nn.Module, *, lora: bool) -> None:
        self.policy = policy
        self.model = None if lora else frozen_copy(policy)

    @torch.no_grad()
    def logprobs(self, rollout: Rollout, temperature: float) -> torch.Tensor:
        if self.model is not None:
            return score_tokens(self.model, rollout, temperature)["logprobs"]
        with adapters_disabled(self.policy):
            return score_tokens(self.policy, rollout, temperature)["logprobs"]


class Learner:
    """AdamW over the policy's trainable weights and the value head; one call per update.

    The learning rate is constant (the schedule helper with no warmup and no decay keeps
    ``optimizer_step`` shared with pretraining); gradients are clipped to ``grad_clip``.
    """

    def __init__(self, params: list[nn.Parameter], *, lr: float, weight_decay: float,
                 grad_clip: float | None, autocast: Callable, scaler) -> None:
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.scheduler = build_scheduler(self.optimizer, max_lr=lr, min_lr=lr, warmup_steps=0,
                                         total_steps=1)
        self.grad_clip, self.autocast, self.scaler = grad_clip, autocast, scaler

    def update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        optimizer_step(self.optimizer, self.scheduler, self.scaler, self.params, self.grad_clip)


@torch.no_grad()
def score_before_update(policy: nn.Module, reference: Reference, rollout: Rollout,
                        temperature: float, *, value_head: nn.Module | None = None,
                        chunk: int = 8) -> dict[str, torch.Tensor]:
    """The rollout policy's log-probs, entropy (and values) and the reference's log-probs,
    ``chunk`` rollouts per forward pass: a whole batch's (B, R, vocab) fp32 log-softmax
    would be gigabytes for GPT-2's 50k-token vocabulary."""
    parts = []
    for index in torch.arange(len(rollout.responses)).split(chunk):
        part = rollout.select(index)
        out = score_tokens(policy, part, temperature, value_head=value_head, with_entropy=True)
        out["ref_logprobs"] = reference.logprobs(part, temperature)
        parts.append(out)
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def minibatches(n: int, size: int, epochs: int, generator: torch.Generator
                ) -> Iterator[torch.Tensor]:
    """Row indices of each update: ``epochs`` shuffled passes over ``n`` rollouts."""
    for _ in range(epochs):
        yield from torch.randperm(n, generator=generator).split(size)
