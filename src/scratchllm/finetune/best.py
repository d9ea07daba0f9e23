"""The best-on-validation model of a fine-tuning run, kept in ``OUT/best/``.

Writing a model directory at every improvement would cost a full save per evaluation, so the
trainable tensors are copied to the CPU when validation improves, and ``OUT/best/`` is written
from that copy only at checkpoints and at the end. Checkpoints carry the copy too (in the
trainer state), so a resumed run restores exactly the best a straight run would have kept,
and ``restore_into`` puts it back into the model before LoRA adapters are saved and merged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.model.lora import lora_layers, merge_lora

BEST_DIR = "best"
SaveFn = Callable[[Path, nn.Module, dict[str, Any]], Path]


def merged_copy(model: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` with ``weights`` (some of its parameters) put in and LoRA merged."""
    clone = copy.deepcopy(model)
    if weights:
        params = dict(clone.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
    if lora_layers(clone):
        merge_lora(clone)
    return clone


class BestModel:
    """Tracks the highest score (a tuple: higher is better) and the weights that earned it."""

    def __init__(self, directory: Path, save: SaveFn) -> None:
        self.directory, self.save = directory, save
        self.score: tuple[float, ...] | None = None
        self.info: dict[str, Any] = {}
        self.weights: dict[str, torch.Tensor] | None = None  # trainable tensors, on the CPU
        self.written = True

    def offer(self, model: nn.Module, score: tuple[float, ...] | None, info: dict[str, Any]) -> bool:
        """Keep the model's trainable tensors if ``score`` beats the best so far."""
        if score is None or any(s != s for s in score):  # no validation split, or NaN
            return False
        if self.score is not None and score <= self.score:
            return False
        self.score, self.info = tuple(score), dict(info)
        self.weights = {name: p.detach().to("cpu", copy=True)
                        for name, p in model.named_parameters() if p.requires_grad}
        self.written = False
        return True

    def write(self, model: nn.Module) -> Path | None:
        """Save ``OUT/best/`` if the best changed since it was last written."""
        if self.written or self.weights is None:
            return None
        clone = merged_copy(model, self.weights)
        try:
            path = self.save(self.directory, clone, {"best": True, **self.info})
        finally:
            del clone
        self.written = True
        return path

    def restore_into(self, model: nn.Module) -> bool:
        """Put the best weights back into ``model`` (before merging LoRA); False if none."""
        if self.weights is None:
            return False
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.weights.items():
                params[name].copy_(value)
        return True

    def state_dict(self) -> dict[str, Any] | None:
        if self.score is None:
            return None
        return {"score": list(self.score), "info": self.info, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """After resuming: best/ on disk was written with the checkpoint."""
        self.written = True
        if state:
            self.score, self.info = tuple(state["score"]), dict(state.get("info") or {})
            self.weights = dict(state["weights"])
