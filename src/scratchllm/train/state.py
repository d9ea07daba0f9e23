"""Resumable training: checkpoints that continue a run exactly where it stopped (book 5.4).

The book saves the model and AdamW state so training can go on later; to continue *exactly*
(same batches, same dropout masks, same learning-rate schedule) a checkpoint also needs the
step counters, the data iterator's position and every random-number generator's state.

Run directory layout written by ``save_checkpoint``::

    RUN_DIR/
      checkpoints/step-00000200/     one complete checkpoint per save (newest ``keep_last`` kept)
        config.json, model.safetensors   a model directory (scratchllm.weights.model_dir)
        trainer_state/
          state.json      TrainingState (step, tokens_seen, epoch, best_val_loss, data_state),
                          val_loss and train_config, as JSON
          optimizer.pt    optimizer.state_dict()   tensors/plain values only, read back with
          scheduler.pt    scheduler.state_dict()   torch.load(weights_only=True): never unpickles
          rng.pt          python random, numpy, torch CPU (+ CUDA/MPS) generator states
          data_state.pt   only when data_state holds tensors (JSON can't)
      latest/             model directory of the newest checkpoint (hard links, no extra disk)
      best/               model directory of the checkpoint with the lowest val_loss so far
      LATEST              text file naming the newest checkpoint, e.g. "step-00000200"

``scratchllm generate --model RUN_DIR`` (or ``RUN_DIR/latest``) loads ``latest/``.
Each directory is written to a hidden temp directory and renamed into place, so a crash
mid-save leaves the previous checkpoint, ``latest/`` and ``best/`` intact.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError, MissingFileError
from scratchllm.train.run_control import capture_rng_state, restore_rng_state
from scratchllm.utils.atomic import atomic_directory, fsync_dir, fsync_file, write_json
from scratchllm.weights.model_dir import (CONFIG_FILE, LATEST_DIR, WEIGHTS_FILE, PathLike,
                                         load_weights_into, read_header, write_model_files)

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
LATEST_POINTER = "LATEST"
TRAINER_DIR = "trainer_state"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


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
def _step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint dirs, oldest step first (temp/half-deleted dirs are skipped)."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and _is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def _is_complete(ckpt_dir: Path) -> bool:
    return all((ckpt_dir / name).is_file()
               for name in (CONFIG_FILE, WEIGHTS_FILE, f"{TRAINER_DIR}/{STATE_FILE}"))


def _remove_tree(path: Path) -> None:
    """Rename to a hidden name first, so a crash mid-delete never leaves a valid-looking dir."""
    hidden = path.with_name(f".{path.name}.old-{os.getpid()}-{id(path):x}")
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _remove_stale_temps(directory: Path) -> None:
    """Drop temp dirs an earlier, killed save left behind (they never look like checkpoints)."""
    if directory.is_dir():
        for child in directory.iterdir():
            if child.name.startswith(".") and (".tmp-" in child.name or ".old-" in child.name):
                shutil.rmtree(child, ignore_errors=True)


def _link_model_dir(source: Path, target: Path) -> None:
    """Make ``target`` a model dir with ``source``'s files: hard links (files are never edited
    in place, so sharing is safe), or copies where the file system has no hard links."""
    with atomic_directory(target) as tmp:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            try:
                os.link(source / name, tmp / name)
            except OSError:
                shutil.copy2(source / name, tmp / name)
                fsync_file(tmp / name)


def _recorded_best(run_dir: Path) -> float | None:
    try:
        value = json.loads((run_dir / BEST_DIR / CONFIG_FILE).read_text())["metadata"]["val_loss"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _write_pointer(run_dir: Path, name: str) -> None:
    tmp = run_dir / f".{LATEST_POINTER}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, run_dir / LATEST_POINTER)
    fsync_dir(run_dir)


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
                    keep_last: int | None = 3, scaler=None) -> Path:
    """Write ``RUN_DIR/checkpoints/step-{step:08d}/`` and refresh latest/, best/ and LATEST.

    ``keep_last`` newest checkpoints (by step) survive, plus the one just written; None keeps
    all. ``best/`` moves here when ``val_loss`` is finite and lower than best/'s recorded one.
    The saved ``best_val_loss`` is the lowest of state.best_val_loss, best/'s and val_loss.
    ``scaler`` (optional)
    is an AMP GradScaler. Returns the checkpoint directory.
    """
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int)
                                  or keep_last < 1):
        raise ConfigError(f"keep_last must be a positive integer or None, got {keep_last!r}")
    if isinstance(state.step, bool) or not isinstance(state.step, int) or state.step < 0:
        raise ConfigError(f"TrainingState.step must be a non-negative integer, got {state.step!r}")
    run_dir = Path(run_dir).expanduser()
    valid_loss = val_loss is not None and math.isfinite(val_loss)
    previous_best = _recorded_best(run_dir)
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
    metadata = {"step": state.step, "tokens_seen": state.tokens_seen, "epoch": state.epoch,
                "val_loss": val_loss, "checkpoint": f"{CHECKPOINTS_DIR}/{name}"}

    ckpt_root = run_dir / CHECKPOINTS_DIR
    _remove_stale_temps(ckpt_root)
    _remove_stale_temps(run_dir)
    ckpt_dir = ckpt_root / name
    with atomic_directory(ckpt_dir) as tmp:
        write_model_files(tmp, model, tokenizer, metadata)
        _write_trainer_state(tmp / TRAINER_DIR, optimizer, scheduler, scaler, record)

    _link_model_dir(ckpt_dir, run_dir / LATEST_DIR)
    if valid_loss and (previous_best is None or val_loss < previous_best):
        _link_model_dir(ckpt_dir, run_dir / BEST_DIR)
    _write_pointer(run_dir, name)
    if keep_last is not None:
        old = [path for _, path in _step_dirs(run_dir) if path != ckpt_dir]
        for path in old[: max(0, len(old) - (keep_last - 1))]:
            _remove_tree(path)
    return ckpt_dir


# ---------------------------------------------------------------------------- loading
def latest_checkpoint(run_dir: PathLike) -> Path | None:
    """The checkpoint named by RUN_DIR/LATEST, else the complete one with the highest step."""
    run_dir = Path(run_dir).expanduser()
    try:
        named = (run_dir / LATEST_POINTER).read_text(encoding="utf-8").strip()
    except OSError:
        named = ""
    if _STEP_DIR.match(named) and _is_complete(run_dir / CHECKPOINTS_DIR / named):
        return run_dir / CHECKPOINTS_DIR / named
    found = _step_dirs(run_dir)
    return found[-1][1] if found else None


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
    saved = read_header(ckpt_dir)["config"]
    current = model.config.to_dict()
    diffs = [f"{key}: checkpoint {saved.get(key)!r} vs model {current.get(key)!r}"
             for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
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
