"""The pretraining loop: batches in, better weights, metrics, samples and checkpoints out (book 5.2).

The book's ``train_model_simple`` grown into a resumable job: gradient accumulation, clipping,
a warmup + cosine learning rate (appendix D), mixed precision, periodic evaluation and
sampling, checkpoints that continue bit-for-bit, and a Ctrl-C or SIGTERM that saves before
stopping (``scratchllm pretrain`` then exits 128 + the signal: 130 or 143).

Mixed precision is the standard recipe: parameters and AdamW state are always fp32 (a preset
whose config says bf16 is trained with fp32 master weights, see ``steps.master_weights_config``)
and ``--precision bf16``/``fp16`` only autocasts the forward pass; ``fp32`` means fp32 compute.

A run directory (``TrainConfig.out_dir``) ends up holding ``train_config.json``,
``metrics.jsonl``, ``loss.png`` (``RunFiles.draw_plot``), ``checkpoints/step-N/``, and ``latest/`` + ``best/`` model
directories (best/ = the lowest validation loss measured, whether or not a checkpoint fell on
that step). ``scratchllm generate --model RUN_DIR`` loads ``RUN_DIR/latest``.

Under ``torchrun`` the same loop trains with DDP or FSDP (``scratchllm.train.distributed``):
``batch_size`` stays the global batch, each process accumulates ``batch_size /
(micro_batch_size x processes)`` micro batches of its own share of the data, and rank 0 alone
writes the run directory (which must be on a file system every node sees, for resuming).
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
from torch import nn

from scratchllm.errors import ConfigError, DataError, ScratchLLMError
from scratchllm.model.cpu_matmul import onednn_linears
from scratchllm.model.registry import model_from_config
from scratchllm.tokenizers import get_tokenizer, tokenizer_from_dict
from scratchllm.train import distributed, steps
from scratchllm.train.batches import is_prepared, load_batches
from scratchllm.train.compiling import compile_for_training
from scratchllm.train.config import TrainConfig
from scratchllm.train.metrics import METRICS_FILE, MetricsLog, Progress
from scratchllm.train.optim import build_optimizer, build_scheduler
from scratchllm.train.run_control import Silent, StopRequest, seed_everything
from scratchllm.train.run_dir import disk_full_error, is_disk_full
from scratchllm.train.run_files import RunFiles
from scratchllm.train.state import TrainingState, latest_checkpoint
from scratchllm.train.tokenizer import run_tokenizer, trained_bpe_size
from scratchllm.utils.device import resolve_device
from scratchllm.utils.heap import retained_heap


@dataclass
class TrainResult:
    """How a run ended."""

    run_dir: Path
    step: int
    total_steps: int
    tokens_seen: int
    train_loss: float | None = None   # last evaluation's estimates
    val_loss: float | None = None
    checkpoint: Path | None = None
    interrupted: bool = False
    stop_signal: int | None = None    # the signal that stopped the run (SIGINT, SIGTERM)
    seconds: float = 0.0
    samples: list[str] = field(default_factory=list)
    is_main: bool = True              # False on the ranks > 0 of a multi-process run


def sample_text(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of ``prompt`` (book 5.1.3 ``generate_and_print_sample``).

    Greedy decoding draws no random numbers, so sampling mid-run leaves training unchanged.
    """
    from scratchllm.generate import generate

    ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    return tokenizer.decode(generate(model, ids, max_new_tokens, temperature=0.0))


class Trainer(RunFiles):
    """One run of ``config``; ``run()`` trains until the last step, a stop request or ``stop_at``."""

    def __init__(self, config: TrainConfig, *, stream: TextIO | None = None) -> None:
        self.config = config
        self.run_dir = Path(config.out_dir)
        self.check_run_dir()  # refuse a wrong --out before loading data or building the model
        self.dist, self.device = distributed.setup_distributed(config.distributed,
                                                               resolve_device(config.device))
        try:
            self._build(stream)
        except BaseException:
            self.close()
            raise

    def _build(self, stream: TextIO | None) -> None:
        config, dist = self.config, self.dist
        self.stream = Silent() if not dist.is_main else stream if stream is not None else sys.stderr
        self.accum_steps = config.accum_steps_for(dist.world_size)
        self.precision = steps.resolve_precision(config.precision, self.device)
        seed_everything(config.seed)  # the same on every rank: FSDP needs identical initial weights

        data = Path(config.data) if config.data is not None else None
        if data is not None and is_prepared(data):
            if trained_bpe_size(config.tokenizer) is not None:
                raise ConfigError(f"tokenizer {config.tokenizer!r} trains a BPE on a text file, "
                                  f"but {config.data} is already tokenized; give the text file")
            text_tokenizer = None
        else:
            text_tokenizer = run_tokenizer(config.tokenizer, config.data, config.train_ratio)
        self.train_batches, self.val_batches, spec = load_batches(
            config.data, text_tokenizer, context_length=config.context_length,
            stride=config.stride or config.context_length, batch_size=config.micro_batch_size,
            train_ratio=config.train_ratio, seed=config.seed, rank=dist.rank,
            world_size=dist.world_size)
        # A prepared token file records the tokenizer that wrote it; samples must decode with it.
        self.tokenizer = text_tokenizer or (tokenizer_from_dict(spec) if spec
                                            else get_tokenizer(config.tokenizer))
        model_config = steps.master_weights_config(config.model_config())
        if self.tokenizer.vocab_size > model_config.vocab_size:
            raise ConfigError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model's "
                              f"vocab_size is {model_config.vocab_size}; raise model.vocab_size")
        self.model = model_from_config(model_config).to(self.device)
        self.model_class = type(self.model)  # before FSDP swaps in its wrapper subclass
        # DDP wraps the model; FSDP shards it in place (so the optimizer comes after this).
        wrapped = distributed.wrap_model(self.model, dist)
        self.no_sync = distributed.no_sync_factory(wrapped, dist)
        self.forward_model = compile_for_training(self.model, wrapped, config.compile)
        self.optimizer = build_optimizer(self.model, lr=config.lr, weight_decay=config.weight_decay,
                                         betas=config.betas, decay_all=config.decay_all)
        if dist.enabled:  # different dropout masks on each rank
            torch.manual_seed(config.seed + dist.rank)
        self.steps_per_epoch = len(self.train_batches) // self.accum_steps
        if self.steps_per_epoch == 0:
            raise DataError(f"one optimizer step needs {self.accum_steps} micro batches but an "
                            f"epoch has only {len(self.train_batches)}; lower batch_size")
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, max_lr=config.lr,
                                         min_lr=config.effective_min_lr,
                                         warmup_steps=config.warmup_steps, total_steps=self.total_steps)
        self.scaler = steps.grad_scaler_for(self.precision, self.device)
        self.autocast = steps.autocast_for(self.precision, self.device)
        self.state = TrainingState(step=0, tokens_seen=0, epoch=0, data_state={}, best_val_loss=None)
        self.metrics = MetricsLog(self.run_dir / METRICS_FILE)
        self.last_eval: tuple[float, float] | None = None
        self.last_eval_step = -1
        self.checkpoint: Path | None = None
        self.best_pending = False  # this step's evaluation is the best so far, best/ not written
        self.plot_stale = False    # eval records written since loss.png was last drawn
        self.plotted_at: float | None = None

    # ------------------------------------------------------------------------ the loop
    def say(self, text: str) -> None:
        self.progress.message(text)

    def train_step(self) -> tuple[float, int]:
        """One optimizer step over ``accum_steps`` micro batches; returns (loss, tokens)."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        loss, tokens = steps.accumulate_gradients(self.forward_model, self.micro_batches(),
                                                  self.accum_steps, device=self.device,
                                                  autocast=self.autocast, scaler=self.scaler)
        steps.optimizer_step(self.optimizer, self.scheduler, self.scaler,
                             self.model.parameters(), cfg.grad_clip)
        # The mean over ranks is the loss of the global batch; every rank saw as many tokens.
        return self.dist.all_reduce_mean(loss, self.device), tokens * self.dist.world_size

    def micro_batches(self):
        """This step's micro batches. Under DDP/FSDP all but the last are handed out inside
        ``no_sync``, so their forward and backward (run while this generator is paused at the
        ``yield``) only accumulate locally and gradients are averaged once, after the last."""
        for index in range(self.accum_steps):
            batch = self.train_batches.next_batch()
            if self.no_sync is not None and index < self.accum_steps - 1:
                with self.no_sync():
                    yield batch
            else:
                yield batch

    def evaluate(self) -> tuple[float, float]:
        """Train and validation loss over the first ``eval_batches`` batches of each split
        (dealt out to the ranks, averaged over all of them)."""
        n = self.config.eval_batches
        losses = [distributed.sharded_estimate_loss(self.forward_model, batches.first_batches(n),
                                                    self.dist, device=self.device,
                                                    autocast=self.autocast)
                  for batches in (self.train_batches, self.val_batches)]
        return losses[0], losses[1]

    def run(self, *, stop_at: int | None = None) -> TrainResult:
        """Train to ``total_steps`` (or ``stop_at`` steps, checkpointing as on Ctrl-C)."""
        cfg = self.config
        self.progress = Progress(self.total_steps, every=cfg.log_every, stream=self.stream)
        start_time = time.perf_counter()
        try:
            # each step reuses the last one's pages (utils.heap); on AMD CPUs the float32
            # linear layers run through oneDNN (model.cpu_matmul), unless compiled
            with retained_heap(), onednn_linears(enabled=not cfg.compile):
                stop_signal = self.train_loop(stop_at, start_time)
        except ScratchLLMError:
            raise
        except Exception as err:  # metrics, plot or marker on a full disk: one clear line
            if not is_disk_full(err):
                raise
            raise disk_full_error(self.run_dir, "the run's files",
                                  latest_checkpoint(self.run_dir)) from None
        finally:
            self.progress.close()
        state, stopping = self.state, stop_signal is not None
        if stopping:
            self.say(f"{'interrupted' if stop_signal == signal.SIGINT else 'stopped by SIGTERM'} "
                     f"at step {state.step}; saved {self.checkpoint}; continue with --resume")
        finished = not stopping and state.step == self.total_steps
        samples = [self.sample()] if finished and cfg.sample_tokens else []  # FSDP: all ranks
        train_loss, val_loss = self.last_eval or (None, None)
        return TrainResult(run_dir=self.run_dir, step=state.step, total_steps=self.total_steps,
                           tokens_seen=state.tokens_seen, train_loss=train_loss, val_loss=val_loss,
                           checkpoint=self.checkpoint, interrupted=stopping,
                           stop_signal=stop_signal, seconds=time.perf_counter() - start_time,
                           samples=samples if self.dist.is_main else [], is_main=self.dist.is_main)

    def train_loop(self, stop_at: int | None, start_time: float) -> int | None:
        """Claim or resume the run dir, then step, evaluate and save until the end or a stop
        signal; return that signal's number (None when the run reached its end)."""
        cfg = self.config
        self.prepare_run_dir()
        state = self.state
        self.progress.start_step = state.step
        n_params = sum(p.numel() for p in self.model.parameters())
        where = (f"{self.dist.world_size} processes ({self.dist.mode}, {self.device.type})"
                 if self.dist.enabled else str(self.device))
        mixed = "fp32" if self.precision == "fp32" else f"{self.precision} autocast, fp32 weights"
        self.say(f"training {n_params / 1e6:.1f}M parameters on {where} ({mixed}) for "
                 f"{self.total_steps} steps ({self.steps_per_epoch} per epoch, "
                 f"{cfg.batch_size}x{cfg.context_length} tokens each)")
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        self.model.train()
        stopping = False
        with StopRequest() as stop:
            while state.step < end and not stopping:
                self.one_step(start_time)
                stopping = self.dist.any(stop.requested, self.device)  # all ranks stop together
                if stopping or state.step == end or (cfg.save_every and state.step % cfg.save_every == 0):
                    self.save()
                    self.draw_plot(force=True)
                elif self.best_pending:
                    self.save_best()
        return (stop.signum or signal.SIGINT) if stopping else None

    def one_step(self, start_time: float) -> None:
        """Train one step, then log, evaluate and sample when their intervals come round."""
        cfg, state = self.config, self.state
        lr = self.scheduler.get_last_lr()[0]
        tic = time.perf_counter()
        loss, tokens = self.train_step()
        state.step += 1
        state.tokens_seen += tokens
        state.epoch = self.train_batches.epoch
        tok_per_sec = tokens / max(time.perf_counter() - tic, 1e-9)
        self.progress.update(state.step, loss=loss, tokens_per_sec=tok_per_sec, lr=lr)
        record = {"step": state.step, "epoch": round(self.train_batches.epochs_done, 4),
                  "tokens_seen": state.tokens_seen, "lr": lr,
                  "elapsed": round(time.perf_counter() - start_time, 3),
                  "tokens_per_sec": round(tok_per_sec, 1)}
        if state.step % cfg.log_every == 0 and self.dist.is_main:
            self.metrics.write({"event": "train", **record, "loss": loss})
        # Like the book: evaluate after the first step and every eval_every steps after it.
        if (state.step - 1) % cfg.eval_every == 0 or state.step == self.total_steps:
            self.eval_and_log(record)
        if cfg.sample_every and cfg.sample_tokens and state.step % cfg.sample_every == 0:
            self.say(f"sample @ step {state.step}: {self.sample()!r}")  # FSDP: all ranks sample

    def eval_and_log(self, record: dict) -> None:
        train_loss, val_loss = self.evaluate()
        self.last_eval, self.last_eval_step = (train_loss, val_loss), self.state.step
        if val_loss == val_loss and (self.state.best_val_loss is None
                                     or val_loss < self.state.best_val_loss):
            self.state.best_val_loss = val_loss
            self.best_pending = True  # best/ is written after this step (linked if a save is due)
        self.say(f"step {self.state.step}: train loss {train_loss:.3f}, val loss {val_loss:.3f}, "
                 f"val perplexity {steps.perplexity(val_loss):.1f}")
        if self.dist.is_main:
            self.metrics.write({"event": "eval", **record, "train_loss": train_loss,
                                "val_loss": val_loss, "perplexity": steps.perplexity(val_loss)})
            self.plot_stale = True
            self.draw_plot(force=False)

    def sample(self) -> str:
        return sample_text(self.model, self.tokenizer, self.config.sample_prompt,
                           self.config.sample_tokens)

    def close(self, *, finished: bool = False) -> None:
        """Leave the process group (multi-process runs; ``finished``: after every rank got
        to the end, see ``Distributed.destroy``); a no-op for one process."""
        self.dist.destroy(finished=finished)


def train(config: TrainConfig, *, stream: TextIO | None = None, stop_at: int | None = None) -> TrainResult:
    """Run ``config`` to the end (see ``Trainer``); progress and evals go to ``stream`` (stderr)."""
    trainer = Trainer(config, stream=stream)
    finished = False
    try:
        result = trainer.run(stop_at=stop_at)
        finished = True
        return result
    finally:
        trainer.close(finished=finished)
