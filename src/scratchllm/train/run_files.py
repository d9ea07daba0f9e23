"""The Trainer's side of the run directory: claim or resume it, checkpoint it, keep best/ and
loss.png.

A mixin of ``scratchllm.train.loop.Trainer``, which provides the attributes used here
(config, run_dir, dist, model, optimizer, scheduler, scaler, state, ...). The file layout
itself belongs to ``scratchllm.train.state`` and ``scratchllm.train.run_dir``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from scratchllm.errors import CheckpointError, ConfigError
from scratchllm.train import distributed
from scratchllm.train.metrics import METRICS_FILE, read_metrics
from scratchllm.train.plots import PLOT_FILE, plot_losses
from scratchllm.train.run_control import check_not_past_end
from scratchllm.train.run_dir import save_best
from scratchllm.train.optim import lr_at
from scratchllm.train.state import (CHECKPOINTS_DIR, latest_checkpoint, read_trainer_record,
                                     save_checkpoint)
from scratchllm.utils.atomic import atomic_write_text
from scratchllm.utils.outputs import PRETRAIN_RUN, check_output_dir, prepare_output_dir

# loss.png is redrawn at most this often while a run goes on (a redraw reads the whole metrics
# file, so drawing at every evaluation would cost more and more as the run grows), and always
# at a checkpoint and at the end, so the file on disk is never more than this stale.
PLOT_EVERY_S = 60.0


class RunFiles:
    """Resume, claim, checkpoint and best/ for a Trainer (see the module docstring)."""

    def check_run_dir(self) -> Path | None:
        """Apply the output rules without touching anything; return the checkpoint to resume.

        A folder holding anyone else's files is refused, an earlier run is replaced only with
        ``overwrite``, and ``resume`` with nothing to resume from never deletes anything.
        Called before data and model are built, so a refusal costs nothing.
        """
        newest = latest_checkpoint(self.run_dir)
        resume, overwrite = bool(self.config.resume), bool(self.config.overwrite)
        if resume and newest is not None:
            check_output_dir(self.run_dir, PRETRAIN_RUN, resume=True)
            return newest
        decision = check_output_dir(self.run_dir, PRETRAIN_RUN, overwrite=overwrite, resume=resume,
                                    can_resume=newest is not None)
        if decision == "resume" and not overwrite:  # ours, but no checkpoint left to continue
            raise ConfigError(f"{self.run_dir} has no checkpoint to resume from (checkpoints/ "
                              "is empty or gone) but holds an earlier run; nothing was deleted. "
                              "Pass --overwrite to start over, or choose another --out")
        return None

    def prepare_run_dir(self) -> None:
        """Resume from the newest checkpoint, or claim the run directory for a new run."""
        self.dist.barrier()  # every rank looks before rank 0 may clear the directory
        newest = self.check_run_dir()
        overwrite = bool(self.config.overwrite)
        if newest is not None:
            if self.dist.is_main:  # marks a run written before markers existed; deletes nothing
                prepare_output_dir(self.run_dir, PRETRAIN_RUN, resume=True)
            self.resume_from(newest)
            return
        if self.config.resume:
            self.say(f"no checkpoint in {self.run_dir} yet; starting a new run")
        self.dist.barrier()

        def claim() -> None:
            prepare_output_dir(self.run_dir, PRETRAIN_RUN, overwrite=overwrite)
            atomic_write_text(self.run_dir / "train_config.json",
                              json.dumps(self.config.to_dict(), indent=2) + "\n")

        self.on_main(claim, "claiming the run directory")

    def resume_from(self, checkpoint: Path) -> None:
        """Every rank reads the same checkpoint; FSDP then shards the full tensors into place."""
        note = self.length_change(read_trainer_record(checkpoint))  # may refuse: before loading
        self.state = distributed.load_checkpoint_into(
            checkpoint, self.model, self.optimizer, self.dist, self.model_class,
            scheduler=self.scheduler, scaler=self.scaler)
        if self.dist.enabled:  # all ranks now hold rank 0's RNG state; decorrelate the dropout
            torch.manual_seed(self.config.seed + self.dist.rank + 7919 * self.state.step)
        self.train_batches.load_state_dict(self.state.data_state)
        if self.dist.is_main:
            self.metrics.truncate_after(self.state.step)
        self.dist.barrier()
        self.checkpoint = checkpoint
        self.say(f"resumed from {checkpoint} at step {self.state.step}")
        if note:
            self.say(note)
        elif self.state.step >= self.total_steps:  # else it just says "done" as if it trained
            self.say(f"the run had already finished its {self.total_steps} steps: nothing left "
                     f"to train (a larger --max-steps trains on)")

    def length_change(self, record: dict) -> str | None:
        """A line when the resumed run's length differs from the checkpoint's (a new
        --max-steps is allowed: extending a run is ordinary), so a re-planned cosine decay
        is said, not a silent jump in the rate; a length the run has already passed is
        refused. ``record``: the checkpoint's ``read_trainer_record``."""
        saved = record.get("train_config") or {}
        epochs = saved.get("epochs")
        before = saved.get("max_steps") or (epochs * self.steps_per_epoch if epochs else None)
        step, now = int((record.get("state") or {}).get("step", 0)), self.total_steps
        if before is None or before == now:
            return None
        check_not_past_end(self.run_dir, step, now)
        cfg = self.config
        if cfg.effective_min_lr == cfg.lr or step < cfg.warmup_steps:
            return f"length {before} -> {now} steps: continuing to step {now}"
        old_lr, new_lr = (lr_at(step, max_lr=cfg.lr, min_lr=cfg.effective_min_lr,
                                warmup_steps=cfg.warmup_steps, total_steps=total)
                          for total in (before, now))
        return (f"length {before} -> {now} steps: the cosine decay is re-planned over {now} "
                f"steps, so the learning rate at step {step} moves from {old_lr:.3g} to "
                f"{new_lr:.3g}")

    def save(self) -> None:
        """Checkpoint now; best/ moves here if this step's evaluation was the best so far.

        Rank 0 writes while the others wait (FSDP first gathers the full state onto rank 0).
        """
        val_loss = self.last_eval[1] if self.last_eval_step == self.state.step else None
        self.state.data_state = self.train_batches.state_dict()
        to_save = distributed.savable(self.model, self.optimizer, self.dist, self.model_class)
        self.checkpoint = self.run_dir / CHECKPOINTS_DIR / f"step-{self.state.step:08d}"

        def write() -> None:
            model, optimizer = to_save
            self.checkpoint = save_checkpoint(
                self.run_dir, model=model, optimizer=optimizer, scheduler=self.scheduler,
                state=self.state, tokenizer=self.tokenizer, train_config=self.config.to_dict(),
                val_loss=val_loss, keep_last=self.config.keep_last, scaler=self.scaler,
                update_best=self.best_pending)

        self.on_main(write, f"saving the checkpoint of step {self.state.step}")
        self.best_pending = False

    def save_best(self) -> None:
        """Write best/ from the current weights: this step's evaluation beat every earlier one
        and no checkpoint falls on it (a collective under FSDP, like ``save``)."""
        to_save = distributed.savable(self.model, None, self.dist, self.model_class)
        state = self.state
        self.on_main(lambda: save_best(
            self.run_dir, to_save[0], self.tokenizer,
            {"step": state.step, "tokens_seen": state.tokens_seen, "epoch": state.epoch,
             "val_loss": state.best_val_loss}), f"writing best/ at step {state.step}")
        self.best_pending = False

    def on_main(self, write: Callable[[], object], doing: str) -> None:
        """Run ``write`` on rank 0 while the other ranks wait, then tell every rank whether
        it failed (the all-reduce is the barrier). Without that, a failure on rank 0 (a full
        disk, a permission error) left the others blocked at the barrier (NCCL: until its
        timeout) or dying inside the collective library when rank 0's process went away;
        now each raises a one-line error and rank 0 raises its own."""
        error: BaseException | None = None
        if self.dist.is_main:
            try:
                write()
            except BaseException as err:  # re-raised below, after the others know
                error = err
        if self.dist.any(error is not None, self.device) and error is None:
            raise CheckpointError(f"rank 0 failed while {doing} (its error is in its log); "
                                  "every rank stops. Fix that and rerun with --resume to "
                                  "continue from the last checkpoint")
        if error is not None:
            raise error

    def draw_plot(self, *, force: bool) -> None:
        """Redraw loss.png (rank 0) if evaluations came since the last drawing: when ``force``d
        (a checkpoint, the end), else at most every ``PLOT_EVERY_S`` seconds."""
        if not (self.dist.is_main and self.plot_stale):
            return
        if not force and self.plotted_at is not None \
                and time.monotonic() - self.plotted_at < PLOT_EVERY_S:
            return
        plot_losses(read_metrics(self.run_dir / METRICS_FILE), self.run_dir / PLOT_FILE,
                    title=self.run_dir.name)
        self.plot_stale, self.plotted_at = False, time.monotonic()
