"""Pretraining: configuration, optimizer and schedule, the loop, metrics, plots and checkpoints (book ch. 5, appendix D).

``train(TrainConfig(...))`` runs a whole job; ``scratchllm pretrain`` is its command line.
Submodules are imported on first use, so ``import scratchllm.train`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "scratchllm.train.config",
    "load_train_config": "scratchllm.train.config",
    "build_optimizer": "scratchllm.train.optim",
    "build_scheduler": "scratchllm.train.optim",
    "lr_at": "scratchllm.train.optim",
    "Trainer": "scratchllm.train.loop",
    "TrainResult": "scratchllm.train.loop",
    "train": "scratchllm.train.loop",
    "plot_run": "scratchllm.train.plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scratchllm.train' has no attribute {name!r}")
