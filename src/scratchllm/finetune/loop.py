"""The one fine-tuning loop behind ``finetune instruct``, ``dpo`` and ``classify``.

It is pretraining's engine (``scratchllm.train``) around a method-specific loss: AdamW with a
warmup + cosine learning rate (constant by default, the book's recipe), gradient clipping,
gradient accumulation, mixed precision, the same progress line, ``metrics.jsonl`` and loss
plot, ``OUT/best/`` on validation, and checkpoints (``--save-every``, Ctrl-C, SIGTERM) that a
``--resume`` continues bitwise equal on the CPU (weights, optimizer, schedule, every random
generator and the data position come back; see ``finetune.batching``).

A method plugs in a ``FinetuneTask``. Its loss is a *sum* over ``units`` (target tokens,
examples or preference pairs) and the loop divides by the units of the whole step, so a step
split into micro batches computes the gradient of exactly the one big batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import torch
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.finetune.batching import EpochBatches
from scratchllm.finetune.best import BEST_DIR, BestModel, merged_copy
from scratchllm.finetune.resume_check import check_resume
from scratchllm.finetune.runs import MODEL_SUBDIR, RunSetup, fresh_start_notice
from scratchllm.model.lora import lora_layers
from scratchllm.train.metrics import Progress
from scratchllm.train.optim import build_optimizer, build_scheduler
from scratchllm.train.run_control import report_stopped, run_steps
from scratchllm.train.state import TrainingState, load_checkpoint, save_checkpoint
from scratchllm.train.steps import autocast_for, grad_scaler_for, optimizer_step
from scratchllm.weights.auto import generation_header


class FinetuneTask(Protocol):
    """What a fine-tuning method tells the loop."""

    size: int                 # training examples
    dropout: bool             # train-mode forwards (DPO: False, see finetune.dpo)

    def collate(self, indices: list[int]) -> Any: ...
    def measure(self, batch: Any) -> tuple[int, int]: ...            # (units, tokens)
    def loss_sum(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...
    def evaluate(self) -> dict[str, float]: ...
    def end_epoch(self, epoch: int) -> dict[str, float]: ...          # {} for none
    def score(self, event: str, record: dict[str, Any]) -> tuple[float, ...] | None: ...
    def save_model(self, directory: Path, model: nn.Module, metadata: dict) -> Path: ...
    def plot(self) -> None: ...                                        # refresh the run's PNGs


@dataclass
class LoopSettings:
    """The optimization recipe; defaults give the book's constant learning rate."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int = 123
    eval_every: int = 5
    micro_batch_size: int | None = None   # None: the whole batch at once
    warmup_steps: int = 0
    min_lr: float | None = None           # None: lr (constant after warmup); lower: cosine
    grad_clip: float | None = None
    save_every: int = 0                   # 0: checkpoints only on Ctrl-C / stop_at
    keep_last: int = 3
    progress: bool = True
    log_every: int = 10                   # plain-text progress lines every N steps
    stop_at: int | None = None            # stop (and checkpoint) after this many steps

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "LoopSettings":
        """The checked settings among a finetune function's arguments (``locals()``), which
        carry the same names: each method takes them all, and listing them again at every
        call is where one gets dropped."""
        names = [f.name for f in dataclasses.fields(cls)]
        settings = cls(**{name: options[name] for name in names if name in options})
        settings.check()
        return settings

    def check(self) -> None:
        for name in ("epochs", "batch_size", "eval_every", "keep_last", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        micro = self.micro_batch_size
        if micro is not None and (isinstance(micro, bool) or not isinstance(micro, int)
                                  or micro < 1 or self.batch_size % micro):
            raise ConfigError(f"micro_batch_size ({micro!r}) must be a positive divisor of "
                              f"batch_size ({self.batch_size}); e.g. --micro-batch-size "
                              f"{max(1, self.batch_size // 2)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f"lr must be > 0 and weight_decay >= 0, got {self.lr!r} and "
                              f"{self.weight_decay!r}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr must be between 0 and lr ({self.lr}), got {self.min_lr!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be > 0 (or omitted), got {self.grad_clip!r}")

    def recipe(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        return {k: getattr(self, k) for k in ("epochs", "batch_size", "lr", "weight_decay",
                                              "seed", "eval_every", "warmup_steps", "min_lr",
                                              "grad_clip")}


@dataclass
class LoopResult:
    step: int
    total_steps: int
    tokens_seen: int
    examples_seen: int
    last_eval: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    stop_signal: int | None = None        # SIGINT / SIGTERM that stopped it (None: stop_at)
    checkpoint: Path | None = None
    best: BestModel | None = None
    seconds: float = 0.0


def _describe(record: dict[str, float]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v * 100:.2f}%" if k.endswith("accuracy")
                     else f"{k.replace('_', ' ')} {v:.4f}" for k, v in record.items()
                     if isinstance(v, float))


class FinetuneLoop:
    """Train ``setup.model`` on ``task`` with ``settings``; ``run()`` returns a LoopResult."""

    def __init__(self, setup: RunSetup, task: FinetuneTask, settings: LoopSettings,
                 recipe: dict[str, Any], *, stream: TextIO | None = None) -> None:
        settings.check()
        self.setup, self.task, self.settings = setup, task, settings
        self.recipe = {**recipe, **settings.recipe()}
        self.model = setup.model
        self.batches = EpochBatches(task.size, settings.batch_size, seed=settings.seed)
        self.total_steps = settings.epochs * self.batches.steps_per_epoch
        self.micro = settings.micro_batch_size or settings.batch_size
        # The book's AdamW: betas (0.9, 0.999), every trainable tensor decayed.
        self.optimizer = build_optimizer(self.model, lr=settings.lr,
                                         weight_decay=settings.weight_decay,
                                         betas=(0.9, 0.999), decay_all=True)
        self.scheduler = build_scheduler(
            self.optimizer, max_lr=settings.lr,
            min_lr=settings.lr if settings.min_lr is None else settings.min_lr,
            warmup_steps=settings.warmup_steps, total_steps=self.total_steps)
        self.autocast = autocast_for(setup.precision, setup.device)
        self.scaler = grad_scaler_for(setup.precision, setup.device)
        self.state = TrainingState()
        self.examples_seen = 0
        self.best = BestModel(setup.out_dir / BEST_DIR, task.save_model)
        self.last_eval: dict[str, float] = {}
        self.checkpoint: Path | None = None
        self.progress = (Progress(self.total_steps, every=settings.log_every, stream=stream)
                         if settings.progress else None)
        self.stream = stream

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)

    # ------------------------------------------------------------------------ resume / save
    def resume(self, checkpoint: Path) -> None:
        """Continue from ``checkpoint``: the recipe must match the one it was written with
        (a new ``epochs`` may extend the run: ``finetune.resume_check``)."""
        if note := check_resume(checkpoint, self.recipe, self.settings,
                                self.batches.steps_per_epoch, self.total_steps):
            self.say(note)
        state = load_checkpoint(checkpoint, model=self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, scaler=self.scaler)
        data = state.data_state or {}
        self.batches.check_state(data.get("data") or {}, state.step, str(checkpoint))
        self.state, self.examples_seen = state, int(data.get("examples_seen", 0))
        self.best.load_state_dict(data.get("best"))
        self.setup.log.truncate_after(state.step)
        self.checkpoint = checkpoint
        self.say(f"resumed from {checkpoint} at step {state.step}")

    def save(self) -> None:
        """Checkpoint (model, optimizer, schedule, RNG, data position) and refresh best/."""
        self.best.write(self.model)
        lora = bool(lora_layers(self.model))
        self.state.data_state = {"data": self.batches.state_dict(self.state.step),
                                 "examples_seen": self.examples_seen,
                                 "best": self.best.state_dict()}
        self.checkpoint = save_checkpoint(
            self.setup.out_dir, model=self.model, optimizer=self.optimizer,
            scheduler=self.scheduler, state=self.state, tokenizer=self.setup.tokenizer,
            train_config=self.recipe, val_loss=None, keep_last=self.settings.keep_last,
            scaler=self.scaler, update_best=False,  # best/ is ours (finetune.best)
            metadata=self.setup.model_metadata,
            generation=generation_header(self.setup.eos_ids), link_latest=not lora)
        if lora:
            # The checkpoint keeps LoRA's layout for --resume; latest/ gets the merged model,
            # which open_model (generate, chat, export) reads like any model directory.
            self.task.save_model(self.setup.out_dir / MODEL_SUBDIR, merged_copy(self.model),
                                 {"step": self.state.step, "checkpoint": self.checkpoint.relative_to(
                                     self.setup.out_dir).as_posix()})
        self.task.plot()

    # ------------------------------------------------------------------------ one step
    def train_step(self) -> tuple[float, dict[str, float], int]:
        """One optimizer step over the step's micro batches: (loss, stats, tokens)."""
        task = self.task
        batches = [task.collate(ix) for ix in self.batches.micro_batches(self.state.step, self.micro)]
        measured = [task.measure(b) for b in batches]
        units = max(1, sum(u for u, _ in measured))
        self.model.train(task.dropout)
        self.optimizer.zero_grad(set_to_none=True)
        total: torch.Tensor | float = 0.0
        stats: dict[str, float] = {}
        for batch in batches:
            with self.autocast():
                loss_sum, extra = task.loss_sum(batch)
            loss = loss_sum / units
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total = total + loss.detach()
            for key, value in extra.items():
                stats[key] = stats.get(key, 0.0) + value
        optimizer_step(self.optimizer, self.scheduler, self.scaler,
                       [p for p in self.model.parameters() if p.requires_grad],
                       self.settings.grad_clip)
        return float(total), {k: v / units for k, v in stats.items()}, sum(t for _, t in measured)

    def one_step(self, start_time: float) -> None:
        state, spe = self.state, self.batches.steps_per_epoch
        epoch = self.batches.position(state.step)["epoch"]
        lr = self.scheduler.get_last_lr()[0]
        tic = time.perf_counter()
        loss, stats, tokens = self.train_step()
        self.examples_seen += self.settings.batch_size
        state.step += 1
        state.tokens_seen += tokens
        state.epoch = epoch
        rate = tokens / max(time.perf_counter() - tic, 1e-9)
        if self.progress is not None:
            self.progress.update(state.step, loss=loss, tokens_per_sec=rate, lr=lr)
        where = {"step": state.step, "epoch": epoch, "tokens_seen": state.tokens_seen,
                 "examples_seen": self.examples_seen}
        self.setup.log.write({"event": "train", **where, "loss": loss, "lr": lr,
                              "tokens_per_sec": round(rate, 1),
                              "elapsed": round(time.perf_counter() - start_time, 3), **stats})
        # Like pretraining and the book: after the first step, every eval_every, and the last.
        if (state.step - 1) % self.settings.eval_every == 0 or state.step == self.total_steps:
            self.last_eval = self.measured(self.task.evaluate)
            self.record("eval", where, self.last_eval)
        if state.step % spe == 0:
            values = self.measured(self.task.end_epoch, epoch)
            if values:
                self.record("epoch", where, values)

    def measured(self, fn, *args) -> dict[str, float]:
        """Run an evaluation hook without dropout or gradients, in the run's precision."""
        self.model.eval()
        with torch.no_grad(), self.autocast():
            return fn(*args)

    def record(self, event: str, where: dict[str, Any], values: dict[str, float]) -> None:
        self.setup.log.write({"event": event, **where, **values})
        label = f"epoch {where['epoch']}" if event == "epoch" else f"step {where['step']}"
        self.say(f"{label}: {_describe(values)}")
        self.best.offer(self.model, self.task.score(event, values),
                        {"step": where["step"], "epoch": where["epoch"], **values})

    # ------------------------------------------------------------------------ the run
    def run(self, intro: str | None = None) -> LoopResult:
        """Train to the last step (or ``stop_at`` / Ctrl-C, which checkpoint first)."""
        settings, state = self.settings, self.state
        if self.setup.checkpoint is not None:
            self.resume(self.setup.checkpoint)
            state = self.state
        elif notice := fresh_start_notice(self.setup):
            self.say(notice)
        if self.progress is not None:
            self.progress.start_step = state.step
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        every = sum(p.numel() for p in self.model.parameters())
        accum = settings.batch_size // self.micro
        self.say(intro or f"fine-tuning {trainable:,} of {every:,} parameters on "
                 f"{self.setup.device} ({self.setup.precision}) for {self.total_steps} steps "
                 f"({self.batches.steps_per_epoch} per epoch, batch {settings.batch_size}"
                 + (f" = {accum} x {self.micro}" if accum > 1 else "") + ")")
        end = self.total_steps if settings.stop_at is None else min(settings.stop_at, self.total_steps)
        start_time = time.perf_counter()
        stopped, stop_signal = run_steps(lambda: self.one_step(start_time), lambda: state.step,
                                         end=end, total=self.total_steps, save=self.save,
                                         save_every=settings.save_every)
        if self.progress is not None:
            self.progress.close()
        if stopped:
            report_stopped(self.progress, stop_signal, state.step, self.checkpoint, self.stream)
        elif not self.last_eval:  # resumed at the very end: nothing evaluated in this session
            self.last_eval = self.measured(self.task.evaluate)
        self.model.eval()
        return LoopResult(step=state.step, total_steps=self.total_steps,
                          tokens_seen=state.tokens_seen, examples_seen=self.examples_seen,
                          last_eval=dict(self.last_eval), interrupted=stopped,
                          stop_signal=stop_signal,
                          checkpoint=self.checkpoint, best=self.best,
                          seconds=time.perf_counter() - start_time)
