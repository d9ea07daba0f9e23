"""AdamW and the learning-rate schedule: linear warmup, then cosine decay (book 5.2, appendix D)."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, *, decay_all: bool = False) -> list[dict]:
    """Split parameters into a decayed and a non-decayed group.

    Weight decay pulls weights toward zero, which is a useful prior for the matrices of linear
    layers and embeddings (every tensor with 2+ dims) but only distorts biases and the LayerNorm
    scale/shift vectors, so those are not decayed (GPT-2/nanoGPT practice). ``decay_all=True``
    decays everything, as the book's ``AdamW(model.parameters(), weight_decay=0.1)`` does.
    Tied weights appear once because ``named_parameters`` skips duplicates.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_all:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95),
                    decay_all: bool = False) -> torch.optim.AdamW:
    """AdamW over ``param_groups``, with PyTorch's fused kernel where it exists (CPU and CUDA).

    The fused step updates all parameters in one kernel instead of a chain of per-tensor ops;
    on a 2-core CPU it cuts the 124M model's optimizer step from seconds to a fraction of one.
    """
    groups = param_groups(model, weight_decay, decay_all=decay_all)
    params = [p for g in groups for p in g["params"]]
    fusable = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                   for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fusable or None)


def lr_at(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Warmup rises linearly as max_lr * (step + 1) / warmup_steps, so the first step already moves
    the weights (appendix D starts from a small initial_lr instead) and the last warmup step uses
    max_lr. Then a half cosine takes the rate from max_lr at ``warmup_steps`` to min_lr at
    ``total_steps``; later steps stay at min_lr. ``min_lr == max_lr`` gives the book's constant
    rate of chapter 5.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _lr_factor(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    if min_lr == max_lr and warmup_steps == 0:
        return 1.0  # exactly the base rate, no rounding from the division below
    return lr_at(step, max_lr=max_lr, min_lr=min_lr, warmup_steps=warmup_steps,
                 total_steps=total_steps) / max_lr


def build_scheduler(optimizer: torch.optim.Optimizer, *, max_lr: float, min_lr: float,
                    warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr_at`` as a LambdaLR (call ``.step()`` after each optimizer step).

    A LambdaLR keeps its position in ``state_dict()``, so a resumed run continues the schedule.
    The factor is a ``functools.partial`` of a module-level function so it stays picklable.
    """
    factor = partial(_lr_factor, max_lr=max_lr, min_lr=min_lr, warmup_steps=warmup_steps,
                     total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
