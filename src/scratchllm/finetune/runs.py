"""Plumbing shared by instruction tuning and DPO: load, (LoRA), train epochs, log, save.

A fine-tuning run directory ``OUT`` ends up holding ``metrics.jsonl`` and ``loss.png`` (as a
pretraining run does), ``latest/`` (the fine-tuned model directory, with LoRA merged, so
``scratchllm generate --model OUT`` works), ``lora.safetensors`` when LoRA was used, and
the method's own results files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import ConfigError, DataError
from scratchllm.utils.outputs import FINETUNE_RUN, check_output_dir, prepare_output_dir
from scratchllm.weights.auto import generation_header, open_model
from scratchllm.weights.model_dir import save_model_dir
from scratchllm.train.metrics import METRICS_FILE, MetricsLog, Progress, read_metrics
from scratchllm.train.optim import build_optimizer
from scratchllm.train.plots import PLOT_FILE, plot_losses
from scratchllm.train.run_control import seed_everything
from scratchllm.train.steps import autocast_for, grad_scaler_for, resolve_precision
from scratchllm.utils.device import resolve_device

MODEL_SUBDIR = "latest"
LORA_FILE = "lora.safetensors"


@dataclass
class RunSetup:
    """What every fine-tuning run starts from."""

    model: nn.Module
    tokenizer: Any
    device: torch.device
    precision: str
    out_dir: Path
    log: MetricsLog
    eos_ids: tuple[int, ...] = ()   # every end id of the source model (kept in saved copies)


def start_run(model_dir: str | Path, out_dir: str | Path, *, device: str | None = "auto",
              precision: str = "auto", seed: int = 123, overwrite: bool = False) -> RunSetup:
    """Load the model (train mode) and its tokenizer; claim ``out_dir`` and start its log.

    ``out_dir`` must be new, empty, or (with ``overwrite``) an earlier scratchllm output
    (``scratchllm.utils.outputs``); it is checked before the model is loaded.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and out.resolve() == Path(model_dir).expanduser().resolve():
        raise ConfigError(f"--out {out} is the input model directory; choose a new folder")
    check_output_dir(out, FINETUNE_RUN, overwrite=overwrite)
    torch_device = resolve_device(device)
    loaded = open_model(model_dir, device=torch_device, require_tokenizer=True)
    out, _ = prepare_output_dir(out, FINETUNE_RUN, overwrite=overwrite)
    seed_everything(seed)
    loaded.model.train()
    return RunSetup(loaded.model, loaded.tokenizer, torch_device,
                    resolve_precision(precision, torch_device), out, MetricsLog(out / METRICS_FILE),
                    loaded.eos_ids)


def maybe_apply_lora(model: nn.Module, lora: dict | None) -> None:
    """Wrap the linear layers in LoRA adapters (appendix E) when ``lora`` settings are given."""
    if not lora:
        return
    from scratchllm.model.lora import apply_lora

    apply_lora(model, **lora)


def describe_trainable(model: nn.Module) -> str:
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return f"trainable parameters: {trainable:,} of {sum(p.numel() for p in params):,}"


def train_loader(dataset, batch_size: int, collate: Callable, seed: int) -> torch.utils.data.DataLoader:
    """Shuffled, last partial batch dropped (book 7.3); its own generator keeps runs repeatable."""
    if len(dataset) < batch_size:
        raise DataError(f"only {len(dataset)} training examples for batch size {batch_size}; "
                        "use a smaller --batch-size or more data")
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       drop_last=True, collate_fn=collate, generator=generator)


def eval_loader(dataset, batch_size: int, collate: Callable) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       drop_last=False, collate_fn=collate)


StepFn = Callable[[Any], tuple[torch.Tensor, dict[str, float], int]]


def train_epochs(setup: RunSetup, loader: Iterable, *, epochs: int, lr: float,
                 weight_decay: float, step_fn: StepFn, eval_fn: Callable[[], dict[str, float]],
                 eval_every: int, progress: bool = True) -> dict[str, float]:
    """The book's ``train_model_simple`` loop for any loss (book 7.6, DPO bonus).

    ``step_fn(batch)`` returns (loss to minimise, extra numbers to log, tokens). Every
    ``eval_every`` optimizer steps and at the end, ``eval_fn()`` is logged as an ``eval``
    record. AdamW decays every parameter with the book's betas (0.9, 0.999).
    Returns the last evaluation.
    """
    if epochs < 1 or eval_every < 1:
        raise ConfigError(f"epochs ({epochs}) and eval_every ({eval_every}) must be at least 1")
    model, device = setup.model, setup.device
    optimizer = build_optimizer(model, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999),
                                decay_all=True)
    autocast = autocast_for(setup.precision, device)
    scaler = grad_scaler_for(setup.precision, device)
    total = epochs * len(loader)
    bar = Progress(total, every=max(1, eval_every)) if progress else None
    step, tokens, last = 0, 0, {}
    start = time.perf_counter()
    for epoch in range(epochs):
        for batch in loader:
            model.train()
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss, extra, n_tokens = step_fn(batch)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            step += 1
            tokens += n_tokens
            value = float(loss.detach())
            setup.log.write({"event": "train", "step": step, "epoch": epoch + 1,
                             "loss": value, "tokens_seen": tokens, **extra})
            if bar is not None:
                rate = tokens / max(1e-9, time.perf_counter() - start)
                bar.update(step, loss=value, tokens_per_sec=rate, lr=lr)
            if step % eval_every == 0 or step == total:
                model.eval()
                with autocast():
                    last = eval_fn()
                setup.log.write({"event": "eval", "step": step, "epoch": epoch + 1,
                                 "tokens_seen": tokens, **last})
                if bar is not None:
                    bar.message(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
    if bar is not None:
        bar.close()
    model.eval()
    return last


def finish_run(setup: RunSetup, *, lora: dict | None, metadata: dict[str, Any]) -> Path:
    """Plot the losses, save LoRA adapters, merge them and save ``OUT/latest``."""
    records = read_metrics(setup.out_dir / METRICS_FILE)
    if any(r.get("event") == "eval" and r.get("train_loss") is not None for r in records):
        plot_losses(records, setup.out_dir / PLOT_FILE, title=setup.out_dir.name)
    model = setup.model
    if lora:
        from scratchllm.model.lora import merge_lora, save_lora

        save_lora(model, setup.out_dir / LORA_FILE)
        merge_lora(model)
    return save_model_dir(setup.out_dir / MODEL_SUBDIR, model, setup.tokenizer, metadata,
                          generation_header(setup.eos_ids))

