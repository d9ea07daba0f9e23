"""Resumable training: checkpoints that continue a run exactly where it stopped (book 5.4).

The book saves the model and AdamW state so training can go on later; to continue *exactly*
(same batches, same dropout masks, same learning-rate schedule) a checkpoint also needs the
step counters, the data iterator's position and every random-number generator's state.

Run directory layout written by ``save_checkpoint``::

    RUN_DIR/
      checkpoints/step-00000200/     one complete checkpoint per save (newest ``keep_last`` kept)
        config.json, model.safetensors, .scratchllm (+ tokenizer.json, tokenizer_config.json
                          for a Hugging Face tokenizer): a model directory (weights.model_dir)
        trainer_state/
          state.json      TrainingState (step, tokens_seen, epoch, best_val_loss, data_state),
                          val_loss and train_config, as JSON
          optimizer.pt    optimizer.state_dict()   tensors/plain values only, read back with
          scheduler.pt    scheduler.state_dict()   torch.load(weights_only=True): never unpickles
          rng.pt          python random, numpy, torch CPU (+ CUDA/MPS) generator states
          data_state.pt   only when data_state holds tensors (JSON can't)
      latest/             model directory of the newest checkpoint (hard links, no extra disk)
      best/               model directory of the lowest val_loss measured so far: linked to
                          a checkpoint when one falls on that evaluation, else written there
      LATEST              text file naming the newest checkpoint, e.g. "step-00000200"

``scratchllm generate --model RUN_DIR`` (or ``RUN_DIR/latest``) loads ``latest/``.
Each directory is written to a hidden temp directory and renamed into place, so a crash
mid-save leaves the previous checkpoint, ``latest/`` and ``best/`` intact; so does a full
disk, which ends in one ``DiskFullError`` line naming that checkpoint (``train.run_dir``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError, MissingFileError
from scratchllm.train.run_control import capture_rng_state, restore_rng_state
from scratchllm.train.run_dir import (BEST_DIR, disk_full_error, is_disk_full, link_model_dir,
                                      recorded_best, remove_stale_temps, remove_tree,
                                      write_pointer)
from scratchllm.utils.atomic import atomic_directory, fsync_dir, write_json
from scratchllm.weights.model_dir import (CONFIG_FILE, LATEST_DIR, PathLike,
                                         load_weights_into, read_header, write_model_files)
from scratchllm.weights.run_layout import (CHECKPOINTS_DIR, LATEST_POINTER, STATE_FILE,
                                          TRAINER_DIR, latest_checkpoint, step_dirs)


@dataclass
class TrainingState:
    """Everything besides weights and optimizer needed to continue a run exactly."""

    step: int = 0                        # optimizer steps completed
    tokens_seen: int = 0
    epoch: int = 0
    data_state: dict = field(default_factory=dict)  # the data iterator's own state_dict()
    best_val_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingState":
        missing = sorted({"step", "tokens_seen", "epoch"} - set(values))
        if missing:
            raise ValueError(f"training state lacks field(s) {missing}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# ---------------------------------------------------------------------------- small file helpers
def _torch_save(path: Path, value: Any) -> None:
    with open(path, "wb") as handle:
        torch.save(value, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _torch_load(path: Path) -> Any:
    """Tensors and plain containers only: ``weights_only=True`` refuses pickled objects."""
    if not path.is_file():
        raise MissingFileError(f"{path} not found; the checkpoint is incomplete, resume from "
                               "another one in the checkpoints/ folder")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is corrupted or holds non-tensor objects ({err}); "
                              "resume from another checkpoint") from err


def _check_weights_only(value: Any, what: str) -> None:
    """Fail at save time (not at resume time) if ``value`` could not be read back safely."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception as err:
        raise ConfigError(f"{what} holds objects other than tensors and plain values ({err}); "
                          "it could not be reloaded safely, so make its state_dict plain") from err


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------- saving
def _write_trainer_state(directory: Path, optimizer, scheduler, scaler, record: dict) -> None:
    directory.mkdir()
    if not _is_json(record["state"]["data_state"]):
        _torch_save(directory / "data_state.pt", record["state"].pop("data_state"))
    write_json(directory / STATE_FILE, record)
    if optimizer is not None:
        _torch_save(directory / "optimizer.pt", optimizer.state_dict())
    if scheduler is not None:
        _torch_save(directory / "scheduler.pt", scheduler.state_dict())
    if scaler is not None:
        _torch_save(directory / "scaler.pt", scaler.state_dict())
    _torch_save(directory / "rng.pt", capture_rng_state())
    fsync_dir(directory)


def save_checkpoint(run_dir: PathLike, *, model: nn.Module, optimizer, scheduler,
                    state: TrainingState, tokenizer: Any = None,
                    train_config: dict | None = None, val_loss: float | None = None,
                    keep_last: int | None = 3, scaler=None,
                    update_best: bool | None = None, metadata: dict | None = None,
                    generation: dict | None = None, link_latest: bool = True) -> Path:
    """Write ``RUN_DIR/checkpoints/step-{step:08d}/`` and refresh latest/, best/ and LATEST.

    ``keep_last`` newest checkpoints (by step) survive, plus the one just written; None keeps
    all. ``update_best`` says whether best/ moves here (the Trainer knows: it tracks
    ``state.best_val_loss``); None decides from the files: best/ moves when ``val_loss`` is
    finite and lower than best/'s recorded one, and the saved ``best_val_loss`` is the lowest
    of state.best_val_loss, best/'s and val_loss. ``scaler`` (optional) is an AMP GradScaler.
    ``metadata`` and ``generation`` go into the model directory's config.json as
    ``save_model_dir`` writes them (a fine-tuned model's prompt format, its end ids), so a
    run stopped early leaves a ``latest/`` that chats and exports as a finished one does.
    ``link_latest=False`` leaves latest/ to the caller: a LoRA checkpoint's weights are in
    LoRA's layout, which no model loader reads, so latest/ gets the merged model instead
    (linking it first would leave an unloadable latest/ to a kill before that write).
    A full disk raises ``DiskFullError`` with the previous checkpoint left as it was.
    Returns the checkpoint directory.
    """
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int)
                                  or keep_last < 1):
        raise ConfigError(f"keep_last must be a positive integer or None, got {keep_last!r}")
    if isinstance(state.step, bool) or not isinstance(state.step, int) or state.step < 0:
        raise ConfigError(f"TrainingState.step must be a non-negative integer, got {state.step!r}")
    run_dir = Path(run_dir).expanduser()
    valid_loss = val_loss is not None and math.isfinite(val_loss)
    saved = state
    if update_best is None:
        previous_best = recorded_best(run_dir)
        update_best = valid_loss and (previous_best is None or val_loss < previous_best)
        best = [v for v in (state.best_val_loss, previous_best, val_loss if valid_loss else None)
                if v is not None]
        saved = dataclasses.replace(state, best_val_loss=min(best) if best else None)
    record = {"state": saved.to_dict(), "val_loss": val_loss, "train_config": train_config}
    if not _is_json({**record, "state": {**record["state"], "data_state": None}}):
        raise ConfigError("train_config and TrainingState fields must be JSON values "
                          "(str/int/float/bool/None/list/dict); convert paths etc. to str")
    if scheduler is not None:
        _check_weights_only(scheduler.state_dict(), "scheduler.state_dict()")
    name = f"step-{state.step:08d}"
    metadata = {**(metadata or {}), "step": state.step, "tokens_seen": state.tokens_seen,
                "epoch": state.epoch, "val_loss": val_loss,
                "checkpoint": f"{CHECKPOINTS_DIR}/{name}"}

    ckpt_root = run_dir / CHECKPOINTS_DIR
    remove_stale_temps(ckpt_root)
    remove_stale_temps(run_dir)
    ckpt_dir = ckpt_root / name
    previous = latest_checkpoint(run_dir)
    stage = "write"
    try:
        with atomic_directory(ckpt_dir) as tmp:
            write_model_files(tmp, model, tokenizer, metadata, generation)
            _write_trainer_state(tmp / TRAINER_DIR, optimizer, scheduler, scaler, record)
        stage = "point"
        write_pointer(run_dir, name)
        if link_latest:
            link_model_dir(ckpt_dir, run_dir / LATEST_DIR)
        stage = "best"
        if update_best:
            link_model_dir(ckpt_dir, run_dir / BEST_DIR)
    except Exception as err:
        if not is_disk_full(err):
            raise
        if stage == "best":  # the checkpoint is complete and current; best/ is the old one
            raise disk_full_error(run_dir, f"{BEST_DIR}/ (step {state.step})", ckpt_dir) from None
        if stage == "point" and previous != ckpt_dir:
            _roll_back(run_dir, ckpt_dir, previous, link_latest)
        raise disk_full_error(run_dir, f"checkpoint {name}", previous) from None
    if keep_last is not None:
        old = [path for _, path in step_dirs(run_dir) if path != ckpt_dir]
        for path in old[: max(0, len(old) - (keep_last - 1))]:
            remove_tree(path)
    return ckpt_dir


def _roll_back(run_dir: Path, ckpt_dir: Path, previous: Path | None, latest: bool) -> None:
    """After a full disk stopped LATEST or latest/ from moving: drop the new checkpoint (which
    frees its space), then point LATEST (and latest/, when it is linked) back at ``previous``."""
    try:
        remove_tree(ckpt_dir)
        if previous is not None:
            write_pointer(run_dir, previous.name)
            if latest:  # hard links: next to no space needed
                link_model_dir(previous, run_dir / LATEST_DIR)
        else:
            (run_dir / LATEST_POINTER).unlink(missing_ok=True)
            if latest and (run_dir / LATEST_DIR).is_dir():
                remove_tree(run_dir / LATEST_DIR)
    except OSError:
        pass  # latest_checkpoint() skips what is gone; loading and --resume still work


# ---------------------------------------------------------------------------- loading
def _resolve_checkpoint(ckpt_dir: PathLike) -> Path:
    path = Path(ckpt_dir).expanduser()
    if (path / TRAINER_DIR).is_dir():
        return path
    newest = latest_checkpoint(path)
    if newest is None:
        raise MissingFileError(f"no checkpoint found at {path} (expected a checkpoints/step-N "
                               "directory or a run directory that contains one)")
    return newest


def _check_config(ckpt_dir: Path, model: nn.Module) -> None:
    """The architecture must match; ``dtype`` may not (weights are cast on load: a run saved
    with bf16 weights resumes with the fp32 master weights training now keeps)."""
    saved = read_header(ckpt_dir)["config"]
    current = model.config.to_dict()
    diffs = [f"{key}: checkpoint {saved.get(key)!r} vs model {current.get(key)!r}"
             for key in sorted(set(saved) | set(current))
             if key != "dtype" and saved.get(key) != current.get(key)]
    if diffs:
        raise CheckpointError(f"{ckpt_dir / CONFIG_FILE} does not match the model's config "
                              f"({'; '.join(diffs)}); build the model with the checkpoint's "
                              "config or start a new run")


def read_trainer_record(ckpt_dir: PathLike) -> dict[str, Any]:
    """trainer_state/state.json as saved (state, val_loss, train_config)."""
    path = _resolve_checkpoint(ckpt_dir) / TRAINER_DIR / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise MissingFileError(f"{path} not found; the checkpoint is incomplete") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); resume from another "
                              "checkpoint") from err


def load_train_config(ckpt_dir: PathLike) -> dict | None:
    """The ``train_config`` dict saved with a checkpoint (None if none was given)."""
    return read_trainer_record(ckpt_dir).get("train_config")


def load_checkpoint(ckpt_dir: PathLike, *, model: nn.Module, optimizer, scheduler,
                    scaler=None) -> TrainingState:
    """Restore weights (strict, in place), optimizer, scheduler and RNG states; return the state.

    ``ckpt_dir`` may be a run directory: its latest checkpoint is used. Pass ``optimizer`` /
    ``scheduler`` as None to skip them. RNG states are restored last, so the next random draw
    equals the one that followed the save.
    """
    ckpt_dir = _resolve_checkpoint(ckpt_dir)
    trainer_dir = ckpt_dir / TRAINER_DIR
    _check_config(ckpt_dir, model)
    record = read_trainer_record(ckpt_dir)
    values = dict(record.get("state") or {})
    if (trainer_dir / "data_state.pt").exists():
        values["data_state"] = _torch_load(trainer_dir / "data_state.pt")
    try:
        state = TrainingState.from_dict(values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{trainer_dir / STATE_FILE} is incomplete ({err}); resume from "
                              "another checkpoint") from err
    load_weights_into(model, ckpt_dir)
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if target is None:
            continue
        try:
            target.load_state_dict(_torch_load(trainer_dir / f"{name}.pt"))
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{trainer_dir / f'{name}.pt'} does not fit this {name} "
                                  f"({err}); build it as in the saved run") from err
    restore_rng_state(_torch_load(trainer_dir / "rng.pt"))
    return state
