"""Low-rank adaptation (LoRA): train two small matrices per linear layer instead of the layer (appendix E).

A frozen weight W (out x in) gets a trainable update ``A @ B`` of rank r, with A (in x r) and
B (r x out), so ``y = x W^T + dropout(x) A B * alpha / r``. B starts at zero, so a freshly
adapted model computes exactly what the base model does; training then moves only
r * (in + out) numbers per layer. ``merge_lora`` folds the update into W for inference, and
``save_lora``/``load_lora`` store just the adapters (megabytes instead of the whole model).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

import safetensors.torch
import torch
from torch import nn

from scratchllm.utils.atomic import AtomicWriter, atomic_write_json
from scratchllm.errors import CheckpointError, ConfigError, MissingFileError

# Every linear layer inside the transformer blocks, by the names both families use:
# GPT's fused ``qkv`` and Llama's separate ``W_query``/``W_key``/``W_value``, the output
# projections, and the feed-forward layers (``fc3`` is Llama's SwiGLU down projection).
DEFAULT_TARGETS = ("qkv", "W_query", "W_key", "W_value", "out_proj", "fc1", "fc2", "fc3")
LORA_FORMAT = "scratchllm-lora"


class LoRALinear(nn.Module):
    """``base(x) + dropout(x) @ A @ B * (alpha / rank)`` around a frozen ``nn.Linear`` (appendix E).

    A is drawn like a linear layer's weight (Kaiming-uniform) and B is zero, so at
    initialization the output equals the base layer's output exactly.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        check_lora_settings(rank, alpha, dropout)
        self.base = base
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(base.in_features, rank, **factory))
        self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight, for code that reads ``layer.weight`` (e.g. shape checks)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        """The update in the base weight's (out x in) layout: (A @ B)^T * alpha / r."""
        return (self.lora_A @ self.lora_B).T * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A @ self.lora_B) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


def check_lora_settings(rank: int, alpha: float, dropout: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"LoRA rank must be a positive integer, got {rank!r}; try 8 or 16")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"LoRA alpha must be a positive number, got {alpha!r}; try 2 * rank")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRA-wrapped layer of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _matches(name: str, targets: Iterable[str]) -> bool:
    """A target matches a module name's last component (``qkv``) or the full dotted name."""
    last = name.rsplit(".", 1)[-1]
    return any(t == last or t == name for t in targets)


def apply_lora(model: nn.Module, *, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               target_modules: Iterable[str] = DEFAULT_TARGETS) -> nn.Module:
    """Wrap the matching ``nn.Linear`` layers in ``LoRALinear`` in place and freeze the rest.

    Afterwards only the A and B matrices require gradients; make other parts trainable again
    yourself (e.g. a classification head). Target names match the last component of a
    module's name, so the defaults cover GPT (qkv, out_proj, fc1, fc2); Llama-style models use
    q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj. Returns ``model``.
    """
    check_lora_settings(rank, alpha, dropout)
    targets = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)
    if not targets:
        raise ConfigError("apply_lora needs at least one target module name, e.g. ('qkv', 'fc1')")
    if lora_layers(model):
        raise ConfigError("the model already has LoRA layers; call merge_lora(model) first or "
                          "keep training the existing adapters")
    chosen = [name for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and _matches(name, targets)]
    if not chosen:
        linear_names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                               if isinstance(m, nn.Linear)})
        raise ConfigError(f"no linear layer matches LoRA target_modules {list(targets)}; this "
                          f"model's linear layers are named: {', '.join(linear_names)}")
    for param in model.parameters():
        param.requires_grad_(False)
    for name in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, dropout))
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each adapter into its base weight (W += (A B)^T * alpha / r) and unwrap it.

    The merged model runs as fast as the original and saves as a plain model directory.
    Base weights keep ``requires_grad=False``. The sum is formed in float32 and rounded
    once, so a bfloat16 base does not lose the (small) update to rounding twice. Returns
    ``model`` (changed in place).
    """
    for name, layer in lora_layers(model).items():
        base = layer.base
        delta = (layer.lora_A.float() @ layer.lora_B.float()).T * layer.scaling
        base.weight.copy_((base.weight.float() + delta).to(base.weight.dtype))
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, base)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (``<module>.lora_A`` / ``.lora_B``), detached."""
    return {name: tensor.detach() for name, tensor in model.state_dict().items()
            if name.endswith((".lora_A", ".lora_B"))}


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors count once."""
    params = list(model.parameters())  # parameters() already skips duplicates
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ---------------------------------------------------------------------------- files
def sidecar_path(path: str | os.PathLike) -> Path:
    """``adapter.safetensors`` -> ``adapter.json`` (rank, alpha and targets of the adapters)."""
    return Path(path).with_suffix(".json")


def lora_settings(model: nn.Module) -> dict:
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the model has no LoRA layers to save; call apply_lora(model) first")
    first = next(iter(layers.values()))
    return {"format": LORA_FORMAT, "format_version": 1, "rank": first.rank,
            "alpha": first.alpha,
            "dropout": float(getattr(first.dropout, "p", 0.0)),
            "target_modules": sorted({n.rsplit(".", 1)[-1] for n in layers}),
            "modules": sorted(layers)}


def save_lora(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapters to ``path`` (safetensors) plus a JSON sidecar, each atomically."""
    path = Path(path).expanduser()
    settings = lora_settings(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    with AtomicWriter(path) as writer:
        writer.write(safetensors.torch.save(tensors, metadata={"format": "pt"}))
    atomic_write_json(sidecar_path(path), settings)
    return path


def _read_settings(path: Path) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        raise MissingFileError(f"LoRA settings file {side} not found next to {path}; save "
                               "adapters with save_lora(), which writes both files")
    try:
        settings = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{side} is not valid JSON ({err}); re-save the adapters") from err
    if not isinstance(settings, dict) or settings.get("format") != LORA_FORMAT:
        raise CheckpointError(f"{side} is not a scratchllm LoRA settings file (format "
                              f"{LORA_FORMAT!r} expected)")
    return settings


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapters saved by ``save_lora`` into ``model`` (adding LoRA layers if it has none).

    Rank, targets and every tensor's name and shape must match; a mismatch is a
    CheckpointError naming the file. Returns ``model``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"LoRA adapter file {path} not found; check the path")
    settings = _read_settings(path)
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # safetensors has its own error types for damaged files
        raise CheckpointError(f"{path} is truncated or corrupted ({err}); re-save the "
                              "adapters") from err
    if not lora_layers(model):
        try:
            apply_lora(model, rank=int(settings["rank"]), alpha=float(settings["alpha"]),
                       dropout=float(settings.get("dropout", 0.0)),
                       target_modules=settings.get("modules") or settings["target_modules"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: adapters do not fit this model ({err})") from err
    layer = next(iter(lora_layers(model).values()))
    if (layer.rank, layer.alpha) != (settings.get("rank"), settings.get("alpha")):
        raise CheckpointError(
            f"{path} holds rank-{settings.get('rank')} adapters with alpha {settings.get('alpha')}"
            f", but the model's LoRA layers have rank {layer.rank} and alpha {layer.alpha}; load "
            "into a model without LoRA layers (they are then added to match the file)")
    expected = {k: tuple(v.shape) for k, v in lora_state_dict(model).items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])[:3]
        raise CheckpointError(
            f"{path} does not match the model's LoRA layers (missing {missing}, unexpected "
            f"{extra}, wrong shape {shapes}); load it into the same base model with the same "
            f"rank ({settings.get('rank')}) and targets ({settings.get('target_modules')})")
    for name, layer in lora_layers(model).items():
        layer.lora_A.data.copy_(tensors[f"{name}.lora_A"])
        layer.lora_B.data.copy_(tensors[f"{name}.lora_B"])
    return model
