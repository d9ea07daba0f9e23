"""Turn a pretrained language model into a classifier and save/load it (book 6.5-6.6).

The vocabulary-sized output head becomes ``nn.Linear(emb_dim, num_classes)``; the class scores
are read at each row's last real token, the only position whose causal attention has seen the
whole text. Works for every family with ``trf_blocks``, ``final_norm`` and ``out_head`` (GPT,
Llama, Qwen3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError, DataError
from scratchllm.finetune.trainable import TRAINABLE_CHOICES
from scratchllm.model.lora import apply_lora
from scratchllm.model.registry import build_model
from scratchllm.weights.meta import empty_weights, retie
from scratchllm.weights.model_dir import (
    CONFIG_FILE, FAMILY, WEIGHTS_FILE, check_weights, config_from_header, read_header,
    read_weights, resolve_model_dir, save_model_dir, tied_aliases, tokenizer_from_header,
)

CLASSIFIER_KEY = "classifier"  # config.json "metadata" entry of a saved classifier
MODEL_SUBDIR = "model"         # finetune_classifier's out_dir/model


def replace_head(model: nn.Module, outputs: int) -> nn.Module:
    """Swap ``model.out_head`` for a fresh ``Linear(emb_dim, outputs)``: class scores here,
    one scalar reward in ``finetune.reward_model``."""
    head = getattr(model, "out_head", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"{type(model).__name__} has no linear out_head to replace; use a "
                          "scratchllm model (GPT, Llama, Qwen3)")
    model.out_head = nn.Linear(head.in_features, outputs, device=head.weight.device,
                               dtype=head.weight.dtype)
    return model


def attach_classifier_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace ``model.out_head`` with a fresh ``Linear(emb_dim, num_classes)`` (book 6.5)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return replace_head(model, num_classes)


def last_token_logits(model: nn.Module, input_ids: torch.Tensor,
                      lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Class scores (B, C) at each row's last real token of right-padded ``input_ids``.

    Causal attention never looks right, so the padding after a text changes nothing at its
    last real position: the scores equal those of the unpadded text run alone. The book reads
    position -1, which is a padding token for every row shorter than the longest.
    """
    logits = model(input_ids)
    if lengths is None:
        return logits[:, -1, :]
    lengths = lengths.to(logits.device)
    if int(lengths.min()) < 1 or int(lengths.max()) > input_ids.shape[1]:
        raise DataError(f"lengths must be in [1, {input_ids.shape[1]}], got "
                        f"{lengths.tolist()}")
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, logits.shape[-1])
    return logits.gather(1, index).squeeze(1)


def _final_norm(model: nn.Module) -> nn.Module | None:
    for name in ("final_norm", "norm", "ln_f"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    return None


def set_trainable(model: nn.Module, mode: str = "last-block", *, lora_rank: int = 8,
                  lora_alpha: float = 16.0, lora_dropout: float = 0.0) -> nn.Module:
    """Choose what fine-tuning updates (book 6.5; LoRA from appendix E).

    head: only the new output head. last-block: the last transformer block, the final norm and
    the head (the book's choice). all: everything. lora: LoRA adapters on every linear layer
    but the head, plus the head itself.
    """
    if mode not in TRAINABLE_CHOICES:
        raise ConfigError(f"unknown trainable mode {mode!r}; choose one of "
                          f"{', '.join(TRAINABLE_CHOICES)}")
    if mode == "lora":
        targets = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                          if isinstance(m, nn.Linear) and name != "out_head"})
        apply_lora(model, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout,
                   target_modules=targets)
    else:
        for param in model.parameters():
            param.requires_grad_(mode == "all")
    parts = [model.out_head]
    if mode == "last-block":
        parts += [model.trf_blocks[-1], _final_norm(model)]
    for part in parts:
        if part is not None:
            for param in part.parameters():
                param.requires_grad_(True)
    return model


# ---------------------------------------------------------------------------- files
def classifier_metadata(labels: list[str], pad_id: int, max_length: int | None,
                        **extra: Any) -> dict[str, Any]:
    return {CLASSIFIER_KEY: {"labels": list(labels), "num_classes": len(labels),
                             "pad_id": int(pad_id), "max_length": max_length, **extra}}


def save_classifier(out_dir: str | os.PathLike, model: nn.Module, tokenizer: Any,
                    metadata: dict[str, Any]) -> Path:
    """A model directory whose config.json metadata says it is a classifier (see ``load_classifier``)."""
    if CLASSIFIER_KEY not in metadata:
        raise ConfigError("classifier metadata missing; build it with classifier_metadata()")
    return save_model_dir(out_dir, model, tokenizer, metadata)


def resolve_classifier_dir(path: str | os.PathLike) -> Path:
    """Accept the model directory itself or a ``finetune classify`` output folder."""
    path = Path(path).expanduser()
    if not (path / CONFIG_FILE).exists() and (path / MODEL_SUBDIR / CONFIG_FILE).exists():
        return path / MODEL_SUBDIR
    return resolve_model_dir(path)


def load_classifier(path: str | os.PathLike, *, device: torch.device | str | None = None
                    ) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, classifier metadata) from a saved classifier directory."""
    directory = resolve_classifier_dir(path)
    header = read_header(directory)
    info = (header.get("metadata") or {}).get(CLASSIFIER_KEY)
    if not isinstance(info, dict) or not isinstance(info.get("labels"), list):
        raise CheckpointError(f"{directory / CONFIG_FILE} is a language model, not a classifier; "
                              "fine-tune one with `scratchllm finetune classify`")
    model, tokenizer = load_headed_model(directory, header, len(info["labels"]), device=device)
    return model, tokenizer, info


def load_headed_model(directory: Path, header: dict[str, Any], outputs: int, *,
                      device: torch.device | str | None = None) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer) of a saved model whose out_head has ``outputs`` rows."""
    config = config_from_header(header, directory)
    weights = read_weights(directory)
    # empty_weights, not the meta device: buffers that are not saved (RoPE's cos/sin tables of
    # Llama/Qwen3) must stay real, or moving the model to a device fails.
    with empty_weights():
        model = build_model(header.get("family", FAMILY), config)
        replace_head(model, outputs)
    check_weights(model, weights, directory / WEIGHTS_FILE)
    aliases = tied_aliases(model)
    model.load_state_dict(weights, strict=False, assign=True)
    retie(model, aliases)
    model.to(device=device).eval()
    tokenizer = tokenizer_from_header(header, directory)
    if tokenizer is None:
        raise CheckpointError(f"{directory / CONFIG_FILE} stores no tokenizer; re-save the "
                              "model with its tokenizer")
    return model, tokenizer


@torch.no_grad()
def classify_texts(model: nn.Module, tokenizer: Any, texts: list[str], labels: list[str], *,
                   max_length: int | None = None, truncate: bool = False,
                   batch_size: int = 16) -> list[tuple[str, float]]:
    """(label, probability) of the most likely class for each text (book 6.8 ``classify_review``)."""
    device = next(model.parameters()).device
    limit = model.config.context_length
    pad_id = tokenizer.eot_id
    results: list[tuple[str, float]] = []
    for start in range(0, len(texts), batch_size):
        rows = []
        for number, text in enumerate(texts[start:start + batch_size], start=start + 1):
            ids = tokenizer.encode(text)
            if not ids:
                raise DataError(f"text {number} is empty; give some text to classify")
            cap = min(limit, max_length or limit) if truncate else limit
            if len(ids) > cap:
                if not truncate:
                    raise DataError(f"text {number} is {len(ids)} tokens, more than the model's "
                                    f"context length {limit}; pass --truncate to keep the first "
                                    f"{limit}")
                ids = ids[:cap]
            rows.append(ids)
        width = max(map(len, rows))
        batch = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for r, row in enumerate(rows):
            batch[r, : len(row)] = torch.tensor(row)
        lengths = torch.tensor([len(r) for r in rows])
        probs = torch.softmax(last_token_logits(model, batch.to(device), lengths).float(), -1)
        best = probs.argmax(-1)
        results += [(labels[int(i)], float(probs[r, i])) for r, i in enumerate(best)]
    return results
