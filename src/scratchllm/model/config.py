"""The GPT architecture's hyperparameters as one small validated dataclass (book 4.1)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from scratchllm.errors import ConfigError

# Sizes of the four GPT-2 releases (Radford et al. 2019; book 4.6, exercise 4.3). The context
# length of 1024 and the 50,257-token vocabulary are GPT-2's own.
_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-small": dict(emb_dim=768, n_layers=12, n_heads=12),
    "gpt2-medium": dict(emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-large": dict(emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-xl": dict(emb_dim=1600, n_layers=48, n_heads=25),
    # Small enough for unit tests and the laptop demo, same vocabulary as GPT-2.
    "tiny": dict(context_length=128, emb_dim=64, n_layers=2, n_heads=4, drop_rate=0.0),
}
_ALIASES = {"gpt2": "gpt2-small", "124m": "gpt2-small", "355m": "gpt2-medium",
            "774m": "gpt2-large", "1558m": "gpt2-xl"}


@dataclass
class GPTConfig:
    """Hyperparameters of a GPT model.

    Field names follow the book's ``GPT_CONFIG_124M`` dictionary. ``tie_weights`` shares the
    token-embedding matrix with the output head, as OpenAI's GPT-2 does; the book's model keeps
    them separate (163M instead of 124M parameters, book 4.6).
    """

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    tie_weights: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        rate = self.drop_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ConfigError(f"GPTConfig.drop_rate must be a number in [0, 1), got {rate!r}")
        for name in ("qkv_bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if self.emb_dim % self.n_heads != 0:
            raise ConfigError(
                f"GPTConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads "
                f"({self.n_heads}) so every head gets the same width; change one of them"
            )

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A named architecture (gpt2-small/medium/large/xl or tiny), optionally overridden."""
        return cls.from_dict({**preset_values(_PRESETS, name, _ALIASES), **overrides})

    @staticmethod
    def preset_names() -> list[str]:
        return list(_PRESETS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GPTConfig":
        """Build from a dict, refusing unknown keys with the list of valid ones."""
        return cls(**known_fields(cls, values))


def known_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` if every key is a field of dataclass ``cls``; else ConfigError listing them."""
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; valid fields are: "
                          f"{', '.join(sorted(valid))}")
    return values


def preset_values(presets: dict[str, dict[str, Any]], name: str,
                  aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """The fields of preset ``name`` (case-insensitive); ConfigError listing the choices."""
    key = name.lower()
    key = (aliases or {}).get(key, key)
    if key not in presets:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    return presets[key]
