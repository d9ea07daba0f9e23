"""Model families by name: which config dataclass and model class rebuild a saved model.

A model directory's config.json names its family ("gpt", "llama", ...); this registry turns
that name back into classes, so ``save_model_dir``/``load_model_dir`` work for every
architecture without knowing any of them (book 5.4, generalised to the Llama/Qwen3 bonus
chapters). Families other than GPT are imported lazily, only when asked for, so a missing
or half-finished optional family never breaks loading GPT models.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from torch import nn

from scratchllm.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class Family:
    """One architecture: ``config_cls.from_dict`` rebuilds the config, ``model_cls(config)``
    the model."""

    name: str
    config_cls: type
    model_cls: type


# name -> (module, config class name, model class name); imported on first use.
_KNOWN: dict[str, tuple[str, str, str]] = {
    "gpt": ("scratchllm.model.gpt", "GPTConfig", "GPTModel"),
    "llama": ("scratchllm.model.llama", "LlamaConfig", "LlamaModel"),
    "qwen3": ("scratchllm.model.llama", "LlamaConfig", "LlamaModel"),  # same classes, qk_norm
}
_LOADED: dict[str, Family] = {}


def register_family(name: str, config_cls: type, model_cls: type) -> Family:
    """Add (or replace) a family; ``config_cls`` needs to_dict/from_dict, models a ``.config``."""
    family = Family(name, config_cls, model_cls)
    _LOADED[name] = family
    return family


def _try_load(name: str) -> Family | None:
    if name in _LOADED:
        return _LOADED[name]
    if name not in _KNOWN:
        return None
    module_name, config_name, model_name = _KNOWN[name]
    try:
        module = importlib.import_module(module_name)
        if module_name == "scratchllm.model.gpt":
            from scratchllm.model.config import GPTConfig as config_cls
        else:
            config_cls = getattr(module, config_name)
        model_cls = getattr(module, model_name)
    except (ImportError, AttributeError):
        return None  # optional family not installed (yet)
    return register_family(name, config_cls, model_cls)


def family_names() -> list[str]:
    """Families that can be loaded in this installation."""
    return [name for name in dict.fromkeys([*_KNOWN, *_LOADED]) if _try_load(name) is not None]


def get_family(name: str) -> Family:
    """The family called ``name``; CheckpointError listing the available ones otherwise."""
    family = _try_load(name) if isinstance(name, str) else None
    if family is None:
        raise CheckpointError(
            f"unknown model family {name!r}; this scratchllm can load: "
            f"{', '.join(family_names())} (upgrade scratchllm for other architectures)"
        )
    return family


def family_of(model: nn.Module) -> str:
    """The family name to store for ``model`` (the first registered family of its class)."""
    for name in family_names():
        if type(model) is _LOADED[name].model_cls:
            return name
    raise ConfigError(
        f"{type(model).__name__} is not a registered scratchllm model family "
        f"({', '.join(family_names())}); register it with register_family(name, config_cls, "
        "model_cls)"
    )


def config_from_dict(name: str, values: dict[str, Any]) -> Any:
    """Rebuild the config dataclass of family ``name`` from its ``to_dict()`` output."""
    return get_family(name).config_cls.from_dict(values)


def build_model(name: str, config: Any) -> nn.Module:
    """Instantiate family ``name``'s model (call inside ``torch.device("meta")`` to skip init)."""
    return get_family(name).model_cls(config)


def model_from_config(config: Any) -> nn.Module:
    """A freshly initialised model of whichever family ``config`` belongs to."""
    for name in family_names():
        if type(config) is _LOADED[name].config_cls:
            return _LOADED[name].model_cls(config)
    raise ConfigError(f"{type(config).__name__} is not the config of a registered model family "
                      f"({', '.join(family_names())})")
