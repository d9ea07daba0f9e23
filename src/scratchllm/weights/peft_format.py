"""PEFT's LoRA adapter files: ``adapter_config.json`` written for ours and checked for theirs,
``adapter_model.safetensors`` read into (lora_A, lora_B) pairs per Hugging Face module.

Only plain LoRA maps onto ``scratchllm.model.lora.LoRALinear`` exactly (``y = W x + B A x *
scaling`` on linear layers). Every option that changes that computation (DoRA, LoRA biases,
extra trained modules, ...) is refused by name on load instead of being silently dropped.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from scratchllm.errors import CheckpointError, MissingFileError
from scratchllm.utils.json_files import read_json_object

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."   # what PEFT puts before the base model's module paths
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
SUPPORTED_TASKS = (None, "CAUSAL_LM")
SUPPORTED = ("plain LoRA on linear layers: r, lora_alpha, lora_dropout, use_rslora, "
             "rank_pattern, alpha_pattern, target_modules")

# Options that only choose targets or the initialisation (the saved tensors already hold the
# result), or that describe the file: any value is fine.
_NEUTRAL = {
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
    "revision", "inference_mode", "r", "target_modules", "exclude_modules", "lora_alpha",
    "lora_dropout", "fan_in_fan_out", "bias", "use_rslora", "init_lora_weights",
    "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern",
    "megatron_config", "megatron_core", "loftq_config", "eva_config", "corda_config",
    "lora_ga_config", "qalora_group_size", "ensure_weight_tying",
}


def pattern_key(patterns: dict[str, Any], module: str) -> str | None:
    """The first ``rank_pattern``/``alpha_pattern`` key that names ``module``, PEFT's way: a
    regular expression matching the end of the dotted path at a component boundary."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def check_peft_config(config: dict[str, Any], path: Path) -> None:
    """Refuse, by name, every setting that LoRALinear cannot compute exactly."""
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type is {config.get('peft_type')!r}; scratchllm "
                              "applies LoRA adapters only (peft_type \"LORA\")")
    if config.get("task_type") not in SUPPORTED_TASKS:
        raise CheckpointError(f"{path}: task_type {config['task_type']!r} is not supported; "
                              "scratchllm applies causal language model adapters (CAUSAL_LM)")
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{path}: bias={config['bias']!r} trains the base model's biases "
                              "too, which scratchllm's LoRA layers do not hold; supported: "
                              "bias=\"none\"")
    for key, value in config.items():
        if key not in _NEUTRAL and value not in (None, False, {}, [], ""):
            raise CheckpointError(f"{path}: {key}={value!r} is not supported by scratchllm; "
                                  f"supported: {SUPPORTED}")
    r, alpha = config.get("r"), config.get("lora_alpha")
    for name, value in (("r", r), ("lora_alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise CheckpointError(f"{path}: {name} must be a positive number, got {value!r}")
    dropout = config.get("lora_dropout") or 0.0
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0 <= dropout < 1:
        raise CheckpointError(f"{path}: lora_dropout must be a number in [0, 1), got "
                              f"{dropout!r}")
    for name in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(name) or {}
        if not isinstance(patterns, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                for v in patterns.values()):
            raise CheckpointError(f"{path}: {name} must be an object of module pattern -> "
                                  "positive number")
        for key in patterns:
            try:
                re.compile(key)
            except re.error as err:
                raise CheckpointError(f"{path}: {name} key {key!r} is not a valid regular "
                                      f"expression ({err})") from err


def module_alpha(config: dict[str, Any], module: str, rank: int) -> float:
    """The alpha that makes ``alpha / rank`` PEFT's scaling for ``module``.

    rsLoRA scales by alpha / sqrt(r); we express it as alpha * sqrt(r) / r, so one
    LoRALinear formula covers both (and the adapter saves back as plain LoRA, same numbers).
    """
    patterns = config.get("alpha_pattern") or {}
    key = pattern_key(patterns, module)
    alpha = float(patterns[key] if key is not None else config["lora_alpha"])
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def module_rank(config: dict[str, Any], module: str) -> int:
    """The rank PEFT would give ``module`` (its layers are built before tensors are read)."""
    patterns = config.get("rank_pattern") or {}
    key = pattern_key(patterns, module)
    return int(patterns[key] if key is not None else config["r"])


def target_names(chosen: set[str], every_linear: set[str]) -> list[str]:
    """PEFT ``target_modules`` naming exactly ``chosen`` among ``every_linear``.

    PEFT adapts each module whose dotted path equals a target or ends in ``.target``. For each
    chosen module we use the layer's name if that names no linear layer left out (``c_attn``
    for every GPT-2 block), else its last two names (``attn.c_proj`` when ``mlp.c_proj`` is
    not adapted), else its full path (one block only). Exactness matters even though a module
    PEFT adapts without tensors computes nothing extra: the config must say what was trained.
    """
    names: set[str] = set()
    for module in chosen:
        parts = module.split(".")
        for suffix in (parts[-1], ".".join(parts[-2:]), module):
            covered = {m for m in every_linear if m == suffix or m.endswith("." + suffix)}
            if covered <= chosen:
                names.add(suffix)
                break
    return sorted(names)


def most_common(values: list[float]) -> float:
    return max(set(values), key=lambda v: (values.count(v), -v))


def build_peft_config(modules: dict[str, tuple[int, float, float]], every_linear: set[str], *,
                      base_source: str | None, fan_in_fan_out: bool) -> dict[str, Any]:
    """``adapter_config.json`` for LoRA on ``modules`` (HF path -> (rank, alpha, dropout)).

    One rank and alpha cover most modules; any others go into ``rank_pattern`` /
    ``alpha_pattern`` under their full path (escaped: PEFT reads the keys as regexes).
    """
    ranks = [r for r, _, _ in modules.values()]
    alphas = [a for _, a, _ in modules.values()]
    r, alpha = int(most_common(ranks)), most_common(alphas)
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "auto_mapping": None,
        "base_model_name_or_path": base_source, "revision": None, "inference_mode": True,
        "r": r, "lora_alpha": alpha,
        "lora_dropout": max(d for _, _, d in modules.values()),
        "target_modules": target_names(set(modules), every_linear),
        "exclude_modules": None, "fan_in_fan_out": fan_in_fan_out, "bias": "none",
        "use_rslora": False, "use_dora": False, "lora_bias": False, "modules_to_save": None,
        "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {re.escape(m): v[0] for m, v in sorted(modules.items()) if v[0] != r},
        "alpha_pattern": {re.escape(m): v[1] for m, v in sorted(modules.items())
                          if v[1] != alpha},
    }


def read_lora_adapter(adapter_dir: str | os.PathLike
                      ) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(checked config, HF module path -> (lora_A weight, lora_B weight)) of a PEFT dir."""
    directory = Path(adapter_dir).expanduser()
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not directory.is_dir():
        raise MissingFileError(f"LoRA adapter directory {directory} does not exist; pass the "
                               f"folder that holds {ADAPTER_CONFIG}")
    if not config_path.is_file():
        raise MissingFileError(f"{directory} has no {ADAPTER_CONFIG}; pass a PEFT LoRA adapter "
                               "directory (save_lora_adapter or peft's save_pretrained)")
    if not weights_path.is_file():
        pickled = (directory / "adapter_model.bin").is_file()
        raise MissingFileError(
            f"{directory} has no {ADAPTER_WEIGHTS}" + (
                " (only adapter_model.bin, a pickle that can run code when loaded); re-save it "
                "with peft's save_pretrained(safe_serialization=True)" if pickled else
                "; copy the adapter's weights file next to its config"))
    config = read_json_object(config_path, fix="re-save the adapter")
    check_peft_config(config, config_path)
    try:
        raw = safetensors.torch.load_file(str(weights_path), device="cpu")
    except Exception as err:  # safetensors' own error types for damaged files
        raise CheckpointError(f"{weights_path} is truncated or corrupted ({err}); re-save the "
                              "adapter") from err
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        end = LORA_A if key.endswith(LORA_A) else LORA_B if key.endswith(LORA_B) else None
        if not key.startswith(PEFT_PREFIX) or end is None:
            raise CheckpointError(f"{weights_path}: tensor {key} is not a LoRA matrix "
                                  f"({PEFT_PREFIX}<module>{LORA_A} / {LORA_B}); supported: "
                                  "plain LoRA on linear layers")
        pairs.setdefault(key[len(PEFT_PREFIX):-len(end)], {})[end] = tensor
    modules = {}
    for module, pair in pairs.items():
        if set(pair) != {LORA_A, LORA_B} or pair[LORA_A].ndim != 2 or pair[LORA_B].ndim != 2 \
                or pair[LORA_A].shape[0] != pair[LORA_B].shape[1]:
            raise CheckpointError(f"{weights_path}: {module} needs a lora_A (r x in) and a "
                                  "lora_B (out x r) matrix of the same rank; re-save the adapter")
        if pair[LORA_A].shape[0] != module_rank(config, module):
            raise CheckpointError(f"{weights_path}: {module} has rank {pair[LORA_A].shape[0]} but "
                                  f"{ADAPTER_CONFIG} says {module_rank(config, module)}")
        modules[module] = (pair[LORA_A], pair[LORA_B])
    if not modules:
        raise CheckpointError(f"{weights_path} holds no LoRA matrices; re-save the adapter")
    return config, modules
