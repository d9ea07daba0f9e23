"""Where a training run keeps its checkpoints, and which one is the newest.

A run directory holds ``checkpoints/step-N/`` (each a model directory plus
``trainer_state/state.json``) and a ``LATEST`` pointer naming the newest. The training layer
writes them (``train.state``, ``train.run_dir``); opening a model needs to find them too (a
run whose ``latest/`` link is gone), so the layout lives here, below both.
"""

from __future__ import annotations

import re
from pathlib import Path

from scratchllm.weights.model_dir import CONFIG_FILE, WEIGHTS_FILE, PathLike

CHECKPOINTS_DIR = "checkpoints"
LATEST_POINTER = "LATEST"
TRAINER_DIR = "trainer_state"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


def step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
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


def latest_checkpoint(run_dir: PathLike) -> Path | None:
    """The checkpoint named by RUN_DIR/LATEST, else the complete one with the highest step."""
    run_dir = Path(run_dir).expanduser()
    try:
        named = (run_dir / LATEST_POINTER).read_text(encoding="utf-8").strip()
    except OSError:
        named = ""
    if _STEP_DIR.match(named) and _is_complete(run_dir / CHECKPOINTS_DIR / named):
        return run_dir / CHECKPOINTS_DIR / named
    found = step_dirs(run_dir)
    return found[-1][1] if found else None
