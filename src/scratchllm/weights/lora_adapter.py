"""LoRA adapters as PEFT stores them, so they travel between scratchllm and ``peft``.

A directory with ``adapter_config.json`` and ``adapter_model.safetensors`` (tensors named
``base_model.model.<HF module path>.lora_A.weight`` / ``lora_B.weight``): what
``PeftModel.save_pretrained`` writes and ``PeftModel.from_pretrained`` reads. Module names
go through the family's ``FamilyAdapter`` (``trf_blocks.0.att.qkv`` <->
``transformer.h.0.attn.c_attn``), so every family the HF loader knows works here too.

Layouts: PEFT's ``lora_A`` is an ``nn.Linear(in, r)`` (weight r x in) and ``lora_B`` an
``nn.Linear(r, out)`` (weight out x r) for both ``nn.Linear`` and GPT-2's ``Conv1D``:
``fan_in_fan_out`` only tells PEFT to transpose the *merged* update for a Conv1D weight.
Ours are A (in x r) and B (r x out), so each is a plain transpose. GPT-2's fused ``c_attn``
is our fused ``qkv`` row for row (q | k | v), so one adapter on it is one adapter on ours.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError
from scratchllm.model.lora import LoRALinear, lora_layers
from scratchllm.utils.atomic import atomic_directory, write_json
from scratchllm.utils.outputs import OutputKind, check_output_dir, write_marker
from scratchllm.weights.adapter import FamilyAdapter
from scratchllm.weights.peft_format import (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORA_A, LORA_B, PEFT_PREFIX, build_peft_config,
    module_alpha, read_lora_adapter,
)
from scratchllm.weights.safetensors_io import write_safetensors

LORA_ADAPTER = OutputKind("lora-adapter", (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md"))


def family_for(model: nn.Module, family_adapter: FamilyAdapter | None) -> FamilyAdapter:
    if family_adapter is not None:
        return family_adapter
    from scratchllm.weights.hf_export import adapter_for_model

    return adapter_for_model(model)


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters that appear under more than one name (tied head and embedding)."""
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def _hf_module(family: FamilyAdapter, ours: str) -> str:
    try:
        return family.ours_to_hf(f"{ours}.weight").removesuffix(".weight")
    except CheckpointError as err:
        raise ConfigError(f"LoRA layer {ours} has no Hugging Face equivalent ({err}); PEFT "
                          "adapters can hold the transformer blocks' linear layers") from err


def _is_conv1d(family: FamilyAdapter, hf_module: str) -> bool:
    """Whether the family stores this weight transposed (GPT-2's Conv1D): PEFT's fan_in_fan_out."""
    probe = torch.empty(2, 3)
    return tuple(family.transform_out(f"{hf_module}.weight", probe).shape) != (2, 3)


def _linear_names(model: nn.Module, family: FamilyAdapter) -> set[str]:
    """HF paths of every linear layer the exported model has (to name targets exactly)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, LoRALinear)) and not name.endswith(".base"):
            try:
                names.add(family.ours_to_hf(f"{name}.weight").removesuffix(".weight"))
            except CheckpointError:
                continue
    return names


def adapter_tensors(model: nn.Module, family: FamilyAdapter
                    ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, float, float]]]:
    """PEFT-named tensors and (rank, alpha, dropout) per HF module path."""
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the model has no LoRA layers to save; call apply_lora(model) first")
    lora_params = {id(p) for layer in layers.values() for p in (layer.lora_A, layer.lora_B)}
    extra = [n for n, p in model.named_parameters()
             if p.requires_grad and id(p) not in lora_params]
    if extra:
        raise ConfigError(f"parameters outside the LoRA layers are trainable "
                          f"({', '.join(extra[:3])}); a PEFT adapter holds only LoRA matrices, so save the whole model "
                          "directory instead (save_model_dir)")
    shared = _shared_weights(model)
    tensors, modules = {}, {}
    for ours, layer in layers.items():
        if id(layer.base.weight) in shared:
            raise ConfigError(f"LoRA layer {ours} shares its weight with another layer (a tied "
                              "output head); PEFT adapters on tied weights are not supported: "
                              "adapt the transformer blocks' linear layers only")
        hf = _hf_module(family, ours)
        tensors[f"{PEFT_PREFIX}{hf}{LORA_A}"] = layer.lora_A.detach().T.contiguous().cpu()
        tensors[f"{PEFT_PREFIX}{hf}{LORA_B}"] = layer.lora_B.detach().T.contiguous().cpu()
        modules[hf] = (layer.rank, layer.alpha, float(getattr(layer.dropout, "p", 0.0)))
    return tensors, modules


def _readme(config: dict[str, Any]) -> str:
    return (f"# LoRA adapter\n\nWritten by scratchllm in PEFT's layout (rank {config['r']}, "
            f"alpha {config['lora_alpha']}, modules: {', '.join(config['target_modules'])}).\n"
            f"Base model: {config['base_model_name_or_path']}\n\n"
            "* scratchllm: `scratchllm generate --model BASE --adapter THIS_DIR`\n"
            "* peft: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), "
            "THIS_DIR)`\n")


def save_lora_adapter(model: nn.Module, out_dir: str | os.PathLike, *,
                      base_source: str | os.PathLike | None = None,
                      family_adapter: FamilyAdapter | None = None,
                      overwrite: bool = False) -> Path:
    """Write ``model``'s LoRA layers as a PEFT adapter directory; return its path.

    ``base_source`` (the base model's path or Hub name) goes into
    ``base_model_name_or_path``; ``family_adapter`` defaults to the one that exports
    ``model``. The folder must be new or empty, or an earlier adapter with ``overwrite``
    (``scratchllm.utils.outputs``); it appears complete or not at all.
    """
    out_dir = Path(out_dir).expanduser()
    family = family_for(model, family_adapter)
    tensors, modules = adapter_tensors(model, family)
    config = build_peft_config(
        modules, _linear_names(model, family),
        base_source=None if base_source is None else str(base_source),
        fan_in_fan_out=any(_is_conv1d(family, m) for m in modules))
    check_output_dir(out_dir, LORA_ADAPTER, overwrite=overwrite)
    with atomic_directory(out_dir) as tmp:
        write_marker(tmp, LORA_ADAPTER)
        write_safetensors(tmp / ADAPTER_WEIGHTS,
                          {name: (t, lambda t=t: t) for name, t in tensors.items()})
        write_json(tmp / ADAPTER_CONFIG, config)
        with open(tmp / "README.md", "w", encoding="utf-8") as handle:
            handle.write(_readme(config))
            handle.flush()
            os.fsync(handle.fileno())
    return out_dir


# ---------------------------------------------------------------------------- loading
def _target(model: nn.Module, family: FamilyAdapter, hf_module: str, a: torch.Tensor,
            b: torch.Tensor, path: Path) -> str:
    """Our module name for ``hf_module``, checked to be a linear layer of matching shape."""
    ours = family.hf_to_ours(f"{hf_module}.weight")
    module = None
    if ours is not None and ours.endswith(".weight"):
        ours = ours.removesuffix(".weight")
        try:
            module = model.get_submodule(ours)
        except AttributeError:
            module = None
    if not isinstance(module, (nn.Linear, LoRALinear)):
        raise CheckpointError(f"{path}: the adapter adapts {hf_module}, which this "
                              f"{type(model).__name__} has no linear layer for; use the base "
                              "model the adapter was trained on")
    if id(module.weight) in _shared_weights(model):
        raise CheckpointError(f"{path}: the adapter adapts {hf_module}, whose weight this "
                              "model ties to another layer (the output head to the embedding);"
                              " adapters on tied weights are not supported")
    expected = (module.in_features, module.out_features)
    if (a.shape[1], b.shape[0]) != expected:
        raise CheckpointError(f"{path}: {hf_module} takes {a.shape[1]} -> {b.shape[0]} "
                              f"features but this model's layer is {expected[0]} -> "
                              f"{expected[1]}; use the base model the adapter was trained on")
    return ours


def _plan(model: nn.Module, path: Path, family_adapter: FamilyAdapter | None
          ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, float]], float]:
    """(our module -> (lora_A weight, lora_B weight, alpha), dropout), all checked."""
    config, modules = read_lora_adapter(path)
    family = family_for(model, family_adapter)
    plan = {}
    for hf_module, (a, b) in modules.items():
        ours = _target(model, family, hf_module, a, b, path)
        plan[ours] = (a, b, module_alpha(config, hf_module, a.shape[0]))
    return plan, float(config.get("lora_dropout") or 0.0)


def load_lora_adapter(model: nn.Module, adapter_dir: str | os.PathLike, *,
                      family_adapter: FamilyAdapter | None = None) -> nn.Module:
    """Load a PEFT LoRA adapter directory into ``model`` as LoRA layers; return ``model``.

    A model without LoRA layers gets one ``LoRALinear`` per adapted module (rank and alpha
    from the adapter; everything else frozen, as ``apply_lora`` leaves it), ready to generate
    or to train further; ``merge_lora`` folds them in. A model that already has LoRA layers
    must have exactly the adapter's modules, ranks and alphas. Mismatches raise
    CheckpointError naming the adapter.
    """
    path = Path(adapter_dir).expanduser()
    plan, dropout = _plan(model, path, family_adapter)
    existing = lora_layers(model)
    if existing and set(existing) != set(plan):
        raise CheckpointError(f"{path} adapts {len(plan)} modules but the model's LoRA layers "
                              f"are {len(existing)} others; load it into the base model "
                              "without LoRA layers")
    if not existing:
        for param in model.parameters():
            param.requires_grad_(False)
    with torch.no_grad():
        for ours, (a, b, alpha) in plan.items():
            layer = existing.get(ours)
            if layer is None:
                parent_name, _, attr = ours.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                layer = LoRALinear(getattr(parent, attr), a.shape[0], alpha, dropout)
                setattr(parent, attr, layer)
            elif layer.rank != a.shape[0] or abs(layer.scaling - alpha / a.shape[0]) > 1e-9:
                raise CheckpointError(f"{path}: {ours} has rank {layer.rank} and alpha "
                                      f"{layer.alpha} in the model but rank {a.shape[0]} and "
                                      f"alpha {alpha} in the adapter")
            layer.lora_A.copy_(a.T)
            layer.lora_B.copy_(b.T)
    return model


@torch.no_grad()
def merge_lora_adapter(model: nn.Module, adapter_dir: str | os.PathLike, *,
                       family_adapter: FamilyAdapter | None = None) -> nn.Module:
    """Fold a PEFT LoRA adapter straight into ``model``'s weights (W += B A * alpha / r).

    The sum is formed in float32 from the file's tensors and rounded once, so a bfloat16
    base loses nothing to LoRA matrices stored in bfloat16 first. Returns ``model``.
    """
    path = Path(adapter_dir).expanduser()
    plan, _ = _plan(model, path, family_adapter)
    for ours, (a, b, alpha) in plan.items():
        layer = model.get_submodule(ours)
        if isinstance(layer, LoRALinear):
            raise CheckpointError(f"{ours} is a LoRA layer already; call merge_lora(model) "
                                  f"before merging {path} into it")
        weight = layer.weight
        delta = (b.float() @ a.float()) * (alpha / a.shape[0])
        weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return model


def apply_lora_adapter(model: nn.Module, adapter_dir: str | os.PathLike, *, merge: bool = True,
                       family_adapter: FamilyAdapter | None = None) -> nn.Module:
    """An adapter for inference: merged into the weights (as fast as the base model) unless
    ``merge`` is False (LoRA layers kept, e.g. to inspect or train them); eval mode."""
    if merge:
        merge_lora_adapter(model, adapter_dir, family_adapter=family_adapter)
    else:
        load_lora_adapter(model, adapter_dir, family_adapter=family_adapter)
    return model.eval()


def open_adapter(model: nn.Module, adapter: str | os.PathLike, *, merge: bool = True) -> Path:
    """Apply what ``--adapter`` names to ``model``; return the path actually read.

    A PEFT adapter directory; a fine-tuning run directory holding one in ``adapter/``; or an
    older scratchllm ``lora.safetensors`` file (with its ``lora.json`` sidecar).
    """
    path = Path(adapter).expanduser()
    if path.is_file() and path.name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        path = path.parent  # one of a PEFT directory's files: the directory is meant
    if path.is_file() and path.suffix == ".safetensors":
        from scratchllm.model.lora import load_lora, merge_lora

        load_lora(model, path)
        if merge:
            merge_lora(model)
        model.eval()
        return path
    if path.is_dir() and not (path / ADAPTER_CONFIG).exists() \
            and (path / "adapter" / ADAPTER_CONFIG).is_file():
        path = path / "adapter"
    apply_lora_adapter(model, path, merge=merge)
    return path
