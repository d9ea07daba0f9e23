"""The pieces of one training step: loss, gradient accumulation, evaluation, precision (book 5.1-5.2)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.model.loss import next_token_loss

Batch = tuple[torch.Tensor, torch.Tensor]


def batch_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one batch (book 5.1.2 ``calc_loss_batch``).

    The head and the loss run a few positions at a time (``model.loss.next_token_loss``):
    the same value and gradients without the (B, T, vocab) fp32 logits and their gradient.
    """
    return next_token_loss(model, inputs, targets)


def to_device(batch: Batch, device: torch.device) -> Batch:
    non_blocking = device.type == "cuda"
    return tuple(t.to(device, non_blocking=non_blocking) for t in batch)  # type: ignore[return-value]


def accumulate_gradients(model: nn.Module, micro_batches: Iterable[Batch], accum_steps: int, *,
                         device: torch.device, autocast=contextlib.nullcontext,
                         scaler: torch.amp.GradScaler | None = None) -> tuple[float, int]:
    """Backpropagate ``accum_steps`` micro batches as if they were one big batch.

    Gradients add up over ``backward()`` calls, so dividing each micro batch's mean loss by
    ``accum_steps`` leaves the gradient of the mean over all of them: the same update as one
    batch ``accum_steps`` times larger, in a fraction of the memory.
    Returns (mean loss over the micro batches, tokens processed).
    """
    total, tokens = 0.0, 0
    for inputs, targets in micro_batches:
        inputs, targets = to_device((inputs, targets), device)
        with autocast():
            loss = batch_loss(model, inputs, targets) / accum_steps
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach()
        tokens += inputs.numel()
    return float(total), tokens


@torch.no_grad()
def optimizer_step(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                   params: Iterable[torch.Tensor], grad_clip: float | None) -> None:
    """Clip (on unscaled gradients), step the optimizer (through the fp16 scaler if any), then
    the learning-rate schedule: the end of every training step, pretraining's and fine-tuning's."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()


def estimate_loss(model: nn.Module, batches: Iterator[Batch], *, device: torch.device,
                  autocast=contextlib.nullcontext) -> float:
    """Average of per-batch mean losses (book 5.1.2 ``calc_loss_loader``); NaN with no batches.

    The model is put in eval mode (no dropout) and restored to its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    losses = []
    try:
        for inputs, targets in batches:
            inputs, targets = to_device((inputs, targets), device)
            with autocast():
                losses.append(batch_loss(model, inputs, targets).item())
    finally:
        model.train(was_training)
    return sum(losses) / len(losses) if losses else float("nan")


def perplexity(loss: float) -> float:
    """exp(cross-entropy): the effective number of equally likely next tokens (book 5.1.2)."""
    return math.exp(loss) if loss == loss and loss < 700 else float("inf")


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` becomes bf16 on GPUs that support it, fp32 elsewhere; others are checked."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision 'fp16' needs a CUDA GPU (loss scaling), but the device is "
                          f"{device.type}; use --precision bf16 or fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16; use --precision fp16 or fp32")
    if name not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"unknown precision {name!r}; use auto, fp32, bf16 or fp16")
    return name


def master_weights_config(model_config: Any) -> Any:
    """The model config training builds: the same architecture with fp32 parameters.

    Published Llama 3 / Qwen3 presets say ``dtype: bfloat16``, but AdamW on bf16 weights
    loses every update smaller than the weight's bf16 spacing (1.0 + 1e-4 is 1.0 in bf16), so
    training keeps fp32 master weights and optimizer state and lets autocast run the matmuls in
    bf16/fp16 (``--precision``). Checkpoints, latest/ and best/ then hold the fp32 weights and
    say ``dtype: float32``; load them with ``dtype="bfloat16"`` to run in the preset's dtype.
    """
    if getattr(model_config, "dtype", "float32") != "float32":
        return dataclasses.replace(model_config, dtype="float32")
    return model_config


def autocast_for(precision: str, device: torch.device):
    """A zero-argument factory of the autocast context for ``precision`` (weights stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler_for(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
