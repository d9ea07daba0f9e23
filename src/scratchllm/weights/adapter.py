"""The contract between a model family and the generic Hugging Face loader/exporter.

Each family (GPT-2, Llama, Qwen3, ...) describes how its checkpoints map onto ours with one
``FamilyAdapter``; ``scratchllm.weights.hf`` does the file handling, streaming and validation
once for all of them (book appendix / ch05 "loading pretrained weights", generalised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor, nn


def _identity(name: str, tensor: Tensor) -> Tensor:
    """Default per-tensor transform: no change."""
    return tensor


@dataclass(frozen=True)
class FamilyAdapter:
    family: str                                   # our family name, e.g. "gpt", "llama"
    hf_model_types: tuple[str, ...]               # config.json "model_type" values handled
    config_from_hf: Callable[[dict], Any]         # HF config.json dict -> our config dataclass
    config_to_hf: Callable[[Any], dict]           # our config -> HF config.json dict (incl.
                                                  #   "architectures", "model_type", torch_dtype)
    build_model: Callable[[Any], nn.Module]       # config -> our model (may be on meta device)
    hf_to_ours: Callable[[str], str | None]       # HF tensor name -> our name (None = ignore)
    ours_to_hf: Callable[[str], str]              # inverse, for export
    transform_in: Callable[[str, Tensor], Tensor] = _identity   # per-tensor fix-ups on load
    transform_out: Callable[[str, Tensor], Tensor] = _identity  # (e.g. GPT-2 Conv1D transpose)
