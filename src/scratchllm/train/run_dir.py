"""The run directory's shared pieces: latest/, best/, the LATEST pointer, and a full disk.

``state.save_checkpoint`` writes ``checkpoints/step-N/`` and then, through this module,
points ``latest/`` (and ``best/`` when the run improved) at it with hard links. ``best/`` is
also written on its own (``save_best``) whenever an evaluation beats every earlier one, so it
holds the lowest validation loss measured even when no checkpoint falls on that step.

A save that runs out of disk space ends in ``DiskFullError``: one line that says so and names
the previous checkpoint, which the atomic writes left intact (``--resume`` continues from it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from scratchllm.errors import CheckpointError
from scratchllm.utils.atomic import atomic_directory, atomic_write_text, fsync_dir, fsync_file
from scratchllm.utils.disk_full import is_disk_full  # noqa: F401  (re-exported)
from scratchllm.weights.model_dir import CONFIG_FILE, write_model_files
# the checkpoint layout lives with the model directories, so opening a run needs no training code
from scratchllm.weights.run_layout import LATEST_POINTER, latest_checkpoint

BEST_DIR = "best"


class DiskFullError(CheckpointError):
    """The disk (or quota) filled up while the run was writing; earlier files are intact."""


def disk_full_error(run_dir: Path, what: str, previous: Path | None) -> DiskFullError:
    """The one line a full disk deserves: what failed, which checkpoint is intact, what to do."""
    if previous is None:
        kept = "no checkpoint had been saved yet"
    else:
        kept = (f"the last complete checkpoint {previous.relative_to(run_dir)} is intact (so are "
                "latest/ and best/); free some space and continue with --resume")
    return DiskFullError(f"the disk is full (no space left on device) while writing {what} in "
                         f"{run_dir}; nothing half-written was kept and {kept}")


# ---------------------------------------------------------------------------- small helpers
def remove_tree(path: Path) -> None:
    """Rename to a hidden name first, so a crash mid-delete never leaves a valid-looking dir."""
    hidden = path.with_name(f".{path.name}.old-{os.getpid()}-{id(path):x}")
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def remove_stale_temps(directory: Path) -> None:
    """Drop temp dirs/files an earlier, killed save left behind (they never look like outputs)."""
    if directory.is_dir():
        for child in directory.iterdir():
            if child.name.startswith(".") and (".tmp-" in child.name or ".old-" in child.name):
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


def link_model_dir(source: Path, target: Path) -> None:
    """Make ``target`` a model dir with every file of ``source`` (config, weights, tokenizer
    files, marker; not ``trainer_state/``): hard links, as files are never edited in place,
    or copies where the file system has no hard links."""
    with atomic_directory(target) as tmp:
        for path in sorted(source.iterdir()):
            if not path.is_file():
                continue
            try:
                os.link(path, tmp / path.name)
            except OSError as err:
                if is_disk_full(err):
                    raise
                shutil.copy2(path, tmp / path.name)
                fsync_file(tmp / path.name)


def recorded_best(run_dir: Path) -> float | None:
    """The val loss best/ says it was measured at (None if there is no readable best/)."""
    try:
        value = json.loads((run_dir / BEST_DIR / CONFIG_FILE).read_text())["metadata"]["val_loss"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def write_pointer(run_dir: Path, name: str) -> None:
    """Point RUN/LATEST at checkpoint ``name`` atomically (the temp file never outlives a failure)."""
    atomic_write_text(run_dir / LATEST_POINTER, name + "\n")
    fsync_dir(run_dir)


def save_best(run_dir: Path, model: nn.Module, tokenizer: Any, metadata: dict[str, Any]) -> Path:
    """Write RUN/best/ as a model directory of ``model`` now (atomically, replacing the old).

    ``metadata`` carries at least ``step`` and ``val_loss``. A full disk leaves the old best/.
    """
    target = run_dir / BEST_DIR
    try:
        with atomic_directory(target) as tmp:
            write_model_files(tmp, model, tokenizer, metadata)
    except Exception as err:
        if is_disk_full(err):
            raise disk_full_error(run_dir, f"{BEST_DIR}/ (step {metadata.get('step')})",
                                  latest_checkpoint(run_dir)) from None
        raise
    return target
