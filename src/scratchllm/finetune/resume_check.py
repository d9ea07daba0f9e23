"""What a fine-tuning ``--resume`` may change: nothing of the recipe, but ``epochs``.

Extending a finished run is ordinary (``pretrain --resume`` takes a new ``--max-steps``), and a
new epoch count keeps the resume exact: each epoch's order depends only on (seed, epoch)
(``finetune.batching``) and a constant rate after warmup does not depend on the run's length.
Refused: any other setting, fewer epochs than the checkpoint has done, and a new length under
a rate that decays to ``min_lr``, which was planned over the old length.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratchllm.errors import ConfigError
from scratchllm.train.state import read_trainer_record

if TYPE_CHECKING:
    from scratchllm.finetune.loop import LoopSettings


def check_recipe(checkpoint: Path, recipe: dict[str, Any], *,
                 may_change: tuple[str, ...] = ()) -> dict[str, Any]:
    """Raise ConfigError naming every setting of ``recipe`` (but ``may_change``) that differs
    from the one ``checkpoint`` was written with; return its trainer record."""
    record = read_trainer_record(checkpoint)
    saved = record.get("train_config") or {}
    diffs = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in recipe.items()
             if saved.get(k) != v and k not in may_change]
    if diffs:
        raise ConfigError(f"cannot resume {checkpoint}: the settings differ "
                          f"({'; '.join(diffs)}); pass the ones of the original run")
    return record


def check_resume(checkpoint: Path, recipe: dict[str, Any], settings: "LoopSettings",
                 steps_per_epoch: int, total_steps: int) -> str | None:
    """Raise ConfigError (one line, what to pass) when ``checkpoint`` cannot continue as
    ``recipe``/``settings``; return a line to show when the epoch count changed, else None."""
    record = check_recipe(checkpoint, recipe, may_change=("epochs",))
    saved = record.get("train_config") or {}
    before, epochs = saved.get("epochs"), settings.epochs
    if before == epochs:
        return None
    if settings.min_lr is not None and settings.min_lr != settings.lr:
        raise ConfigError(f"cannot resume {checkpoint} with --epochs {epochs}: its learning "
                          f"rate decays to --min-lr over the {before} epoch(s) it was started "
                          f"with, and another length would bend that curve mid-run; pass "
                          f"--epochs {before}, or start a new run")
    step = int((record.get("state") or {}).get("step", 0))
    if total_steps < step:
        raise ConfigError(f"cannot resume {checkpoint} with --epochs {epochs}: it is at step "
                          f"{step} and {epochs} epoch(s) end at step {total_steps}; pass "
                          f"--epochs {-(-step // steps_per_epoch)} or more")
    return f"--epochs {before} -> {epochs}: continuing to step {total_steps}"
