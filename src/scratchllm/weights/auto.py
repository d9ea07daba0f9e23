"""The one door to every model: ``open_model(source)`` for every command and ``scratchllm.load``.

A scratchllm model directory, a training or fine-tuning run directory (its ``latest/``
model), a Hugging Face directory (GPT-2, Llama 3.x, Qwen3; single or sharded safetensors;
``tokenizer.json`` or GPT-2's ``vocab.json`` + ``merges.txt``), or a Hub name (read from the
local Hugging Face cache, downloaded only when missing and online) all give a
``LoadedModel``: the model in eval mode, its tokenizer, and what generation needs to know
about it (every end-of-sequence id, the chat template).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError, MissingFileError
from scratchllm.utils.device import resolve_device
from scratchllm.utils.json_files import read_json_object

# End-of-turn tokens of common chat formats: when the chat template uses one, it ends a reply.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                      "<|endoftext|>", "<|end_of_text|>", "</s>")


@dataclass
class LoadedModel:
    """A model opened through ``open_model`` and what the commands need to run it."""

    model: nn.Module
    tokenizer: Any
    source: Path                       # the directory the weights came from
    kind: str                          # "scratchllm" | "hf"
    eos_ids: tuple[int, ...] = ()      # every id that ends a generated sequence
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    @property
    def eos_id(self) -> int | None:
        """The main end id (the tokenizer's end of text when it has one)."""
        return self.eos_ids[0] if self.eos_ids else None

    def __iter__(self):  # ``model, tokenizer = open_model(...)`` keeps working
        return iter((self.model, self.tokenizer))


def directory_kind(directory: Path) -> str:
    """'scratchllm' | 'run' | 'hf' for a directory, by what its config.json says."""
    config = directory / "config.json"
    if not config.is_file():
        if (directory / "adapter_config.json").is_file():
            raise MissingFileError(f"{directory} is a LoRA adapter, not a model; pass its base "
                                   f"model as the model and this folder as the adapter "
                                   f"(--model BASE --adapter {directory})")
        if any((directory / name).is_dir() for name in ("latest", "checkpoints", "best")):
            return "run"
        if (directory / "model" / "config.json").is_file():
            return "run"  # a classification fine-tuning run keeps its model in model/
        raise MissingFileError(f"{directory} has no config.json; pass a model directory "
                               "(scratchllm or Hugging Face layout) or a training run directory")
    header = read_json_object(config, error=CheckpointError, fix="the file is damaged")
    if header.get("format") == "scratchllm":
        return "scratchllm"
    if "model_type" in header:
        return "hf"
    raise CheckpointError(f"{config} is neither a scratchllm config (\"format\": "
                          "\"scratchllm\") nor a Hugging Face one (\"model_type\")")


def resolve_source(source: str | os.PathLike) -> tuple[Path, str]:
    """The directory to read and its kind; Hub names come from the local cache first."""
    from scratchllm.weights.hub import download, is_hub_name

    path = Path(source).expanduser()
    if path.is_dir():
        kind = directory_kind(path)
        return path, ("scratchllm" if kind == "run" else kind)
    if path.exists():
        raise MissingFileError(f"{path} is a file; pass the directory that holds config.json")
    if is_hub_name(str(source)):
        return download(str(source)), "hf"
    owner = str(source).split("/")
    if len(owner) == 2 and all(owner) and Path(owner[0]).is_dir():
        raise MissingFileError(
            f"{source} does not exist; it was read as a local path because ./{owner[0]} is a "
            f"folder here. If you meant the Hugging Face Hub model {source}, run "
            f"`scratchllm download {source}` and pass the directory it prints")
    raise MissingFileError(f"{source} does not exist and is not a Hub name; pass a model "
                           "directory, or a name like gpt2, gpt2-medium or owner/repo")


def _ids(value: Any) -> list[int]:
    """An id or list of ids from a JSON config (anything else is ignored)."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0]


def _json_or_empty(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return read_json_object(path, error=CheckpointError, fix="download or re-save it")


def chat_end_ids(tokenizer: Any) -> list[int]:
    """End-of-turn tokens that the tokenizer's chat template writes after each reply."""
    template = getattr(tokenizer, "chat_template", None)
    specials = getattr(tokenizer, "special_tokens", None) or {}
    if not template or not isinstance(specials, dict):
        return []
    return [specials[t] for t in END_OF_TURN_TOKENS if t in specials and t in template]


def collect_eos_ids(tokenizer: Any, *configured: Any, vocab_size: int | None = None
                    ) -> tuple[int, ...]:
    """Every end-of-sequence id, the tokenizer's own end of text first, without repeats.

    ``configured`` are ``eos_token_id`` values of generation_config.json / config.json (an
    int or a list); the chat template's end-of-turn tokens are added, so an instruction
    model's reply ends where its format says a turn ends.
    """
    found: list[int] = []
    eot = getattr(tokenizer, "eot_id", None) if tokenizer is not None else None
    try:
        found += _ids(eot)
    except Exception:  # a tokenizer that names no end token
        pass
    for value in configured:
        found += _ids(value)
    if tokenizer is not None:
        found += chat_end_ids(tokenizer)
    unique = list(dict.fromkeys(found))
    if vocab_size is not None:
        unique = [i for i in unique if i < vocab_size]
    return tuple(unique)


def _open_hf(directory: Path, device: Any, dtype: Any) -> LoadedModel:
    from scratchllm.weights.hf import load_hf_dir

    model, tokenizer = load_hf_dir(directory, device=device, dtype=dtype)
    hf_config = _json_or_empty(directory / "config.json")
    generation = _json_or_empty(directory / "generation_config.json")
    eos = collect_eos_ids(tokenizer, generation.get("eos_token_id"),
                          hf_config.get("eos_token_id"), vocab_size=model.config.vocab_size)
    return LoadedModel(model, tokenizer, directory, "hf", eos,
                       {"model_type": hf_config.get("model_type")})


def _open_scratchllm(directory: Path, device: Any, dtype: Any) -> LoadedModel:
    from scratchllm.weights.model_dir import load_model_dir, read_header, resolve_model_dir

    directory = resolve_model_dir(directory)
    model, tokenizer = load_model_dir(directory, device=device, dtype=dtype)
    header = read_header(directory)
    generation = header.get("generation") if isinstance(header.get("generation"), dict) else {}
    eos = collect_eos_ids(tokenizer, generation.get("eos_ids"),
                          vocab_size=model.config.vocab_size)
    return LoadedModel(model, tokenizer, directory, "scratchllm", eos,
                       dict(header.get("metadata") or {}))


def open_model(source: str | os.PathLike, *, device: torch.device | str | None = None,
               dtype: torch.dtype | str | None = None,
               require_tokenizer: bool = False, adapter: str | os.PathLike | None = None,
               merge_adapter: bool = True, quantize: str | None = None,
               inference_only: bool = False, decode_rows: int = 1,
               compile: bool = False) -> LoadedModel:
    """Open any model scratchllm reads; see the module docstring for what ``source`` may be.

    ``require_tokenizer`` turns a model without a tokenizer into a clear error (every
    command that reads or writes text needs one). ``adapter`` is a LoRA adapter directory
    (PEFT's layout, written by scratchllm or peft) applied on top: merged into the weights,
    or kept as LoRA layers with ``merge_adapter=False``. ``quantize="int8"`` turns every
    linear layer into int8 for generation (``scratchllm.model.quantize``), after the adapter
    is merged; a bad combination (a dtype, a device) is refused before any weight is read.
    ``inference_only=True`` (generate, chat, serve) lets the weights take a layout that
    only runs forward (``scratchllm.model.decode_layout.prepare_decoding``): bf16 linear
    layers on a CPU with bf16 instructions are prepacked for oneDNN
    (``scratchllm.model.cpu_linear``, about 2x the matmul speed), and float32 ones take the
    layout that decodes ``decode_rows`` rows per step fastest (1 for generate and chat, the
    batch width for serve); such a model refuses training. ``compile=True`` (with
    ``inference_only``, one decode row) compiles the one-token decode step with
    ``torch.compile`` before returning (``scratchllm.model.compiled_decode``).
    """
    from scratchllm.model.quantize import check_quantize, quantize_model

    if device is not None:  # "auto", or a typo: resolved or refused in one line, up front
        device = resolve_device(device)
    check_quantize(quantize, dtype, device)
    if inference_only:
        from scratchllm.model.decode_layout import check_decode_rows

        check_decode_rows(decode_rows)
    if compile:
        from scratchllm.model.compiled_decode import check_compile

        if not inference_only:
            raise ConfigError("compile=True compiles decoding, so it needs inference_only=True")
        check_compile(device, decode_rows)
    directory, kind = resolve_source(source)
    opener = _open_hf if kind == "hf" else _open_scratchllm
    loaded = opener(directory, device, dtype)
    if adapter is not None:
        from scratchllm.weights.lora_adapter import open_adapter

        loaded.metadata["adapter"] = str(open_adapter(loaded.model, adapter, merge=merge_adapter))
    if quantize is not None:
        quantize_model(loaded.model, quantize)
    if inference_only:
        from scratchllm.model.decode_layout import prepare_decoding

        prepare_decoding(loaded.model, decode_rows, compile=compile)
    if require_tokenizer and loaded.tokenizer is None:
        raise CheckpointError(
            f"{loaded.source} has no tokenizer (no tokenizer.json, vocab.json + merges.txt, or "
            "tokenizer spec in a scratchllm config.json); add the tokenizer files the model "
            "was trained with")
    return loaded


def load(path_or_name: str | os.PathLike, *, device: torch.device | str | None = None,
         dtype: torch.dtype | str | None = None,
         adapter: str | os.PathLike | None = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` in eval mode from any source ``open_model`` accepts (with a
    LoRA ``adapter`` directory merged in, if given)."""
    loaded = open_model(path_or_name, device=device, dtype=dtype, adapter=adapter)
    return loaded.model, loaded.tokenizer


def generation_header(loaded_or_ids: LoadedModel | tuple[int, ...] | list[int]) -> dict:
    """The ``generation`` entry a scratchllm config.json keeps (so a fine-tuned copy of an HF
    model still stops at every end id its source had)."""
    ids = loaded_or_ids.eos_ids if isinstance(loaded_or_ids, LoadedModel) else loaded_or_ids
    return {"eos_ids": [int(i) for i in ids]}


__all__ = ["LoadedModel", "open_model", "load", "collect_eos_ids", "generation_header",
           "directory_kind", "resolve_source"]
