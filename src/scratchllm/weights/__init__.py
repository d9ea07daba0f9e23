"""Pretrained weights: Hugging Face checkpoints in and out, and downloads (book 5.5, generalised).

* ``load_hf_dir(path)`` / ``export_hf_dir(model, out_dir)``: Hugging Face layout directories.
* ``FamilyAdapter``: how one architecture's tensor names and config map onto ours.
* ``download(name_or_repo)``: fetch a checkpoint from the Hugging Face Hub into a cache.

Submodules are imported on first use, so ``import scratchllm.weights`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FamilyAdapter": "scratchllm.weights.adapter",
    "load_hf_dir": "scratchllm.weights.hf",
    "export_hf_dir": "scratchllm.weights.hf",
    "hf_adapters": "scratchllm.weights.hf",
    "download": "scratchllm.weights.hub",
    "resolve_hub_name": "scratchllm.weights.hub",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scratchllm.weights' has no attribute {name!r}")
