"""Hyperparameters of the Llama 3 / Qwen3 family as one validated dataclass (book bonus chapters).

Field names follow the book's ``LLAMA32_CONFIG_1B`` / ``QWEN_CONFIG_06_B`` dictionaries so a
reader can put them side by side; the preset sizes are the published ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from scratchllm.errors import ConfigError
from scratchllm.model.config import known_fields, preset_values

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1/3.2 RoPE frequency scaling (see ``scratchllm.model.rope``)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context_length: int = 8192

    def __post_init__(self) -> None:
        for name in ("factor", "low_freq_factor", "high_freq_factor", "original_context_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"RopeScaling.{name} must be a positive number, got {value!r}")
        if self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(
                f"RopeScaling.high_freq_factor ({self.high_freq_factor}) must be larger than "
                f"low_freq_factor ({self.low_freq_factor}); Llama 3 uses 4 and 1"
            )


_LLAMA32 = dict(vocab_size=128_256, context_length=131_072, n_kv_groups=8, hidden_dim=8192,
                rope_base=500_000.0, rope_scaling=dict(factor=32.0), rms_norm_eps=1e-5,
                tie_weights=True, dtype="bfloat16")
_QWEN3 = dict(vocab_size=151_936, context_length=40_960, n_heads=16, n_kv_groups=8,
              n_layers=28, head_dim=128, rope_base=1_000_000.0, rms_norm_eps=1e-6,
              qk_norm=True, tie_weights=True, dtype="bfloat16")
_PRESETS: dict[str, dict[str, Any]] = {
    "llama3.2-1b": {**_LLAMA32, "emb_dim": 2048, "n_heads": 32, "n_layers": 16},
    "llama3.2-3b": {**_LLAMA32, "emb_dim": 3072, "n_heads": 24, "n_layers": 28},
    "llama3-8b": dict(vocab_size=128_256, context_length=8192, emb_dim=4096, n_heads=32,
                      n_kv_groups=8, n_layers=32, hidden_dim=14_336, rope_base=500_000.0,
                      rms_norm_eps=1e-5, dtype="bfloat16"),
    "llama3.1-8b": dict(vocab_size=128_256, context_length=131_072, emb_dim=4096, n_heads=32,
                        n_kv_groups=8, n_layers=32, hidden_dim=14_336, rope_base=500_000.0,
                        rope_scaling=dict(factor=8.0), rms_norm_eps=1e-5, dtype="bfloat16"),
    "qwen3-0.6b": {**_QWEN3, "emb_dim": 1024, "hidden_dim": 3072},
    "qwen3-1.7b": {**_QWEN3, "emb_dim": 2048, "hidden_dim": 6144},
    # Small enough for unit tests; rope scaling with a short original context so it matters.
    "tiny-llama": dict(vocab_size=1000, context_length=256, emb_dim=64, n_heads=4,
                       n_kv_groups=2, n_layers=2, hidden_dim=128,
                       rope_scaling=dict(factor=8.0, original_context_length=64)),
    "tiny-qwen3": dict(vocab_size=1000, context_length=256, emb_dim=64, n_heads=4,
                       n_kv_groups=2, n_layers=2, hidden_dim=128, head_dim=32, qk_norm=True,
                       rms_norm_eps=1e-6),
}


@dataclass
class LlamaConfig:
    """Hyperparameters of a Llama 3 or Qwen3 model.

    n_kv_groups is the number of key/value heads (grouped-query attention); head_dim defaults
    to emb_dim // n_heads but Qwen3 sets it independently. dtype is the parameters' dtype
    ("float32", "bfloat16" or "float16"); the published models are bfloat16.
    """

    vocab_size: int = 128_256
    context_length: int = 8192
    emb_dim: int = 4096
    n_heads: int = 32
    n_kv_groups: int = 8
    n_layers: int = 32
    hidden_dim: int = 14_336
    head_dim: int | None = None
    rope_base: float = 500_000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    tie_weights: bool = False
    qk_norm: bool = False
    attention_bias: bool = False
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            fields = {f.name for f in dataclasses.fields(RopeScaling)}
            unknown = sorted(set(self.rope_scaling) - fields)
            if unknown:
                raise ConfigError(f"unknown LlamaConfig.rope_scaling key(s) {unknown}; valid "
                                  f"keys are: {', '.join(sorted(fields))}")
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if self.head_dim is None:
            self.head_dim = self.emb_dim // self.n_heads if _positive_int(self.n_heads) else 0
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_kv_groups",
                     "n_layers", "hidden_dim", "head_dim"):
            if not _positive_int(getattr(self, name)):
                raise ConfigError(
                    f"LlamaConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("rope_base", "rms_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"LlamaConfig.{name} must be a positive number, got {value!r}")
        for name in ("tie_weights", "qk_norm", "attention_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"LlamaConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not (self.rope_scaling is None or isinstance(self.rope_scaling, RopeScaling)):
            raise ConfigError(
                f"LlamaConfig.rope_scaling must be None or a dict with factor, low_freq_factor, "
                f"high_freq_factor, original_context_length; got {self.rope_scaling!r}")
        if self.n_heads % self.n_kv_groups != 0:
            raise ConfigError(
                f"LlamaConfig.n_heads ({self.n_heads}) must be divisible by n_kv_groups "
                f"({self.n_kv_groups}) so each key/value head serves the same number of query "
                "heads; change one of them")
        if self.head_dim % 2 != 0:
            raise ConfigError(
                f"LlamaConfig.head_dim ({self.head_dim}) must be even for rotary embeddings; "
                "set head_dim or change emb_dim/n_heads")
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"LlamaConfig.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "LlamaConfig":
        """A named architecture (see ``preset_names()``), optionally overridden."""
        return cls.from_dict({**preset_values(_PRESETS, name), **overrides})

    @staticmethod
    def preset_names() -> list[str]:
        return list(_PRESETS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # rope_scaling becomes a plain dict (or None)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LlamaConfig":
        """Build from a dict, refusing unknown keys with the list of valid ones."""
        return cls(**known_fields(cls, values))


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
