"""Export a scratchllm model as a Hugging Face directory that ``from_pretrained`` loads.

The inverse of ``scratchllm.weights.hf``: our names -> HF names through the family's adapter,
tensors streamed into (optionally sharded) safetensors files, config.json from the adapter,
and the tokenizer's files. Everything is written into a temp directory that replaces
``out_dir`` only when complete.

So that the export chats in other tools as it does in ``scratchllm chat``, tokenizer_config.json
carries the ``chat_template`` the caller passes (``data.chat_templates.chat_template_for``: the
Alpaca/Phi-3 format a model was fine-tuned with, or the template it came with; this layer knows
no prompt formats), and generation_config.json lists every end-of-sequence id, so
``generate``, ``transformers serve`` and vLLM stop where scratchllm stops.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.model.registry import get_family, family_names
from scratchllm.utils.atomic import atomic_directory, write_json
from scratchllm.utils.outputs import HF_EXPORT, check_output_dir, write_marker
from scratchllm.weights.model_dir import tied_aliases
from scratchllm.weights.adapter import FamilyAdapter
from scratchllm.weights.hf import INDEX_FILE, SINGLE_FILE, hf_adapters
from scratchllm.weights.safetensors_io import TensorSource, tensor_nbytes, write_safetensors

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """'2GB' / '500MB' / '1GiB' / 123456 -> bytes (decimal units, as Hugging Face uses)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(text).upper())
        if not match:
            raise ConfigError(f"cannot read size {text!r}; write it like 2GB, 500MB or 1GiB")
        value = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if value <= 0:
        raise ConfigError(f"shard size must be positive, got {text!r}")
    return value


def adapter_for_model(model: nn.Module) -> FamilyAdapter:
    """The adapter whose family builds this model's class and round-trips its config."""
    config = getattr(model, "config", None)
    families = {name for name in family_names() if get_family(name).model_cls is type(model)}
    candidates = [a for a in hf_adapters() if a.family in families]
    if not candidates:
        raise ConfigError(f"{type(model).__name__} has no Hugging Face export; supported "
                          f"families: {', '.join(sorted({a.family for a in hf_adapters()}))}")
    for adapter in candidates:  # e.g. Llama vs Qwen3 share a class but not a config
        try:
            if adapter.config_from_hf(adapter.config_to_hf(config)) == config:
                return adapter
        except Exception:
            continue
    return candidates[0]


def _tensor_sources(model: nn.Module, adapter: FamilyAdapter) -> dict[str, TensorSource]:
    """HF name -> (view for dtype/shape, producer); tied copies are written once."""
    aliases = tied_aliases(model)
    sources: dict[str, TensorSource] = {}
    for name, tensor in model.state_dict().items():
        if name in aliases:
            continue
        hf_name = adapter.ours_to_hf(name)
        view = adapter.transform_out(hf_name, tensor.detach())
        sources[hf_name] = (view, lambda v=view: v.contiguous())
    if adapter.family == "gpt" and not model.config.qkv_bias:  # GPT-2 always has c_attn.bias
        ref = model.tok_emb.weight
        for i in range(model.config.n_layers):
            zeros = torch.zeros(3 * model.config.emb_dim, dtype=ref.dtype, device=ref.device)
            sources[f"transformer.h.{i}.attn.c_attn.bias"] = (zeros, lambda z=zeros: z)
    return sources


def _shards(sources: dict[str, TensorSource], shard_size: int | None) -> list[list[str]]:
    """Greedy split in name order; a tensor bigger than the limit gets a shard of its own."""
    if shard_size is None:
        return [list(sources)]
    shards: list[list[str]] = [[]]
    used = 0
    for name, (view, _) in sources.items():
        size = tensor_nbytes(view)
        if shards[-1] and used + size > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write_weights(directory: Path, sources: dict[str, TensorSource],
                  shard_size: int | None) -> None:
    shards = _shards(sources, shard_size)
    if len(shards) == 1:
        write_safetensors(directory / SINGLE_FILE, sources)
        return
    weight_map, total = {}, 0
    for i, names in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(directory / file, {n: sources[n] for n in names})
        weight_map.update({n: file for n in names})
    write_json(directory / INDEX_FILE, {"metadata": {"total_size": total},
                                        "weight_map": weight_map})


def _gpt2_tokenizer_config(directory: Path, context_length: int,
                           extra_specials: Sequence[str] = ()) -> None:
    """tokenizer_config.json of GPT-2's layout (vocab.json + merges.txt)."""
    eot = "<|endoftext|>"
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": eot, "eos_token": eot,
              "unk_token": eot, "add_prefix_space": False, "model_max_length": context_length}
    if extra_specials:
        config["additional_special_tokens"] = list(extra_specials)
    write_json(directory / "tokenizer_config.json", config)


def write_tokenizer_files(directory: Path, tokenizer: Any, context_length: int) -> None:
    """tokenizer.json (HF tokenizers) or vocab.json + merges.txt (GPT-2's, or a scratchllm
    BPE that splits text as GPT-2 does, e.g. the speedrun's ``tokenizer: bpe:N``), with its
    config."""
    from scratchllm.tokenizers.bpe import BPETokenizer
    from scratchllm.tokenizers.byte_level import ENDOFTEXT, GPT2_SPLIT_PATTERN
    from scratchllm.tokenizers.gpt2 import GPT2Tokenizer

    if callable(getattr(tokenizer, "save_files", None)):
        tokenizer.save_files(directory)
        return
    if isinstance(tokenizer, GPT2Tokenizer):
        from scratchllm.tokenizers.byte_level import find_gpt2_files
        found = find_gpt2_files(tokenizer.files_dir)
        if found is None:
            warnings.warn("GPT-2 vocabulary files not found locally; exported without "
                          "tokenizer files (set SCRATCHLLM_GPT2_DIR to include them)")
            return
        shutil.copyfile(found[0], directory / "vocab.json")
        shutil.copyfile(found[1], directory / "merges.txt")
        _gpt2_tokenizer_config(directory, context_length)
        return
    if isinstance(tokenizer, BPETokenizer) and tokenizer.pattern == GPT2_SPLIT_PATTERN:
        # The same spelling as GPT-2's files (bytes as printable characters), so GPT-2's
        # tokenizer class runs it; merges.txt's first line is a header transformers skips.
        specials = tokenizer.special_tokens
        write_json(directory / "vocab.json", {**tokenizer.vocab, **specials})
        merges = "".join(f"{a} {b}\n" for a, b in tokenizer.merges)
        (directory / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
        _gpt2_tokenizer_config(directory, context_length,
                               [t for t in specials if t != ENDOFTEXT])
        return
    warnings.warn(f"{type(tokenizer).__name__} has no Hugging Face format; exported the "
                  "model without tokenizer files")


def _tokenizer_id(tokenizer: Any, attribute: str) -> int | None:
    """An id the tokenizer may name (``bos_id``, ``eot_id``), or None."""
    try:
        value = getattr(tokenizer, attribute, None)
    except Exception:  # e.g. a tokenizer that names no end token
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _pad_id(tokenizer: Any) -> int | None:
    """The id of tokenizer_config.json's pad_token, for tokenizers that have one."""
    pad = (getattr(tokenizer, "config", None) or {}).get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    specials = getattr(tokenizer, "special_tokens", None) or {}
    return specials.get(pad) if isinstance(pad, str) else None


def generation_config(tokenizer: Any, hf_config: dict[str, Any],
                      eos_ids: Sequence[int]) -> dict[str, Any]:
    """generation_config.json: every end id (a list), BOS and padding where known. Nothing
    about sampling or length: transformers' defaults are greedy decoding, and a ``max_length``
    here would make it warn at every ``generate(max_new_tokens=...)``."""
    ends = [int(i) for i in eos_ids]
    if not ends:
        found = _tokenizer_id(tokenizer, "eot_id") if tokenizer is not None else None
        ends = [found] if found is not None else \
            [i for i in [hf_config.get("eos_token_id")] if isinstance(i, int)]
    config: dict[str, Any] = {"eos_token_id": list(dict.fromkeys(ends))}
    bos = _tokenizer_id(tokenizer, "bos_id") if tokenizer is not None else None
    bos = bos if bos is not None else hf_config.get("bos_token_id")
    if isinstance(bos, int):
        config["bos_token_id"] = bos
    pad = _pad_id(tokenizer) if tokenizer is not None else None
    if pad is None and ends:
        pad = ends[0]  # what generate() falls back to, without its warning
    if pad is not None:
        config["pad_token_id"] = pad
    return config


def set_chat_template(directory: Path, chat_template: str) -> None:
    """Put ``chat_template`` into directory/tokenizer_config.json (written by the tokenizer)."""
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config["chat_template"] = chat_template
    write_json(path, config)


def export_hf_dir(model: nn.Module, out_dir: str | Path, tokenizer: Any = None, *,
                  shard_size: int | str | None = None, overwrite: bool = False,
                  chat_template: str | None = None, eos_ids: Sequence[int] = ()) -> Path:
    """Write ``model`` (and tokenizer) as a Hugging Face directory; return its path.

    ``shard_size`` ("2GB", bytes) splits the weights into model-0000i-of-0000N.safetensors
    plus model.safetensors.index.json, as ``save_pretrained(max_shard_size=...)`` does.
    ``out_dir`` must be new or empty, or an earlier export replaced with ``overwrite``
    (``scratchllm.utils.outputs``: a folder holding anyone else's files is never touched).
    ``chat_template`` replaces the tokenizer's own (None keeps it); ``eos_ids`` are every
    id that ends a sequence (default: the tokenizer's end of text).
    """
    out_dir = Path(out_dir).expanduser()
    adapter = adapter_for_model(model)
    limit = parse_size(shard_size) if shard_size is not None else None
    hf_config = dict(adapter.config_to_hf(model.config))
    dtype_name = str(next(model.parameters()).dtype).removeprefix("torch.")
    hf_config["torch_dtype"] = hf_config["dtype"] = dtype_name
    if tokenizer is not None and "eos_token_id" in hf_config:
        hf_config["eos_token_id"] = tokenizer.eot_id
    context_length = getattr(model.config, "context_length", 1024)
    generation = generation_config(tokenizer, hf_config, eos_ids)
    check_output_dir(out_dir, HF_EXPORT, overwrite=overwrite)
    with atomic_directory(out_dir) as tmp:
        write_marker(tmp, HF_EXPORT)
        write_weights(tmp, _tensor_sources(model, adapter), limit)
        write_json(tmp / "config.json", hf_config)
        if generation["eos_token_id"]:
            write_json(tmp / "generation_config.json", generation)
        if tokenizer is not None:
            write_tokenizer_files(tmp, tokenizer, context_length)
            if chat_template is not None and (tmp / "tokenizer_config.json").is_file():
                set_chat_template(tmp, chat_template)
    return out_dir
