"""``scratchllm.load``: one call for every place a model can come from.

A scratchllm model directory, a training run directory, a Hugging Face directory, or a Hub
name (downloaded once, then read from the local cache) all give ``(model, tokenizer)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import CheckpointError, MissingFileError


def _kind(directory: Path) -> str:
    """'scratchllm' | 'run' | 'hf' for a directory, by what its config.json says."""
    config = directory / "config.json"
    if not config.is_file():
        if (directory / "latest").is_dir() or (directory / "checkpoints").is_dir():
            return "run"
        raise MissingFileError(f"{directory} has no config.json; pass a model directory "
                               "(scratchllm or Hugging Face layout) or a training run directory")
    try:
        header = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config} is not valid JSON ({err}); the file is damaged") from err
    if isinstance(header, dict) and header.get("format") == "scratchllm":
        return "scratchllm"
    if isinstance(header, dict) and "model_type" in header:
        return "hf"
    raise CheckpointError(f"{config} is neither a scratchllm config (\"format\": "
                          "\"scratchllm\") nor a Hugging Face one (\"model_type\")")


def load(path_or_name: str | os.PathLike, *, device: torch.device | str | None = None,
         dtype: torch.dtype | str | None = None) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)`` in eval mode from a directory or a Hub name.

    Accepts a scratchllm model dir, a run dir (its latest model), a Hugging Face dir, or a
    name such as ``"gpt2"``, ``"gpt2-xl"`` or ``"owner/repo"`` (local cache, else download).
    """
    from scratchllm.train.checkpoint import load_model_dir
    from scratchllm.weights.hf import load_hf_dir
    from scratchllm.weights.hub import download, is_hub_name

    path = Path(path_or_name).expanduser()
    if path.is_dir():
        kind = _kind(path)
        if kind == "hf":
            return load_hf_dir(path, device=device, dtype=dtype)
        return load_model_dir(path, device=device, dtype=dtype)
    if path.exists():
        raise MissingFileError(f"{path} is a file; pass the directory that holds config.json")
    if is_hub_name(str(path_or_name)):
        return load_hf_dir(download(str(path_or_name)), device=device, dtype=dtype)
    raise MissingFileError(f"{path_or_name} is neither a directory nor a Hub name; pass a model "
                           "directory, or a name like gpt2, gpt2-medium or owner/repo")
