"""Load Hugging Face checkpoint directories into scratchllm models (book 5.5, generalised).

One loader for every family: config.json's ``model_type`` picks a ``FamilyAdapter``, the
model is built without parameter storage (``empty_weights``), and tensors are streamed one at
a time from memory-mapped safetensors files, renamed, fixed up, cast and installed with
``load_state_dict(assign=True)``. Peak memory stays near one copy of the model, and every
problem (missing, unexpected or misshapen tensors, damaged files) is reported before a model
is returned, never as a half-loaded one.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError, MissingFileError
from scratchllm.model.quantize import as_dtype
from scratchllm.weights.model_dir import tied_aliases
from scratchllm.weights.adapter import FamilyAdapter
from scratchllm.weights.contained import contained_file
from scratchllm.weights.hf_gpt2 import GPT2_ADAPTER
from scratchllm.weights.meta import check_config_fits, empty_weights, meta_tensor_names, retie
from scratchllm.utils.json_files import read_json_object

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_OPTIONAL_ADAPTER_MODULES = ("scratchllm.weights.hf_llama",)

PathLike = str | os.PathLike


def hf_adapters() -> list[FamilyAdapter]:
    """GPT-2's adapter plus those of optional families that are installed (Llama, Qwen3)."""
    adapters = [GPT2_ADAPTER]
    for module_name in _OPTIONAL_ADAPTER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        adapters += [v for v in vars(module).values()
                     if isinstance(v, FamilyAdapter) and v not in adapters]
    return adapters


def adapter_for_model_type(model_type: Any, config_path: Path) -> FamilyAdapter:
    for adapter in hf_adapters():
        if model_type in adapter.hf_model_types:
            return adapter
    supported = sorted(t for a in hf_adapters() for t in a.hf_model_types)
    raise CheckpointError(f"{config_path}: model_type {model_type!r} is not supported; "
                          f"scratchllm loads: {', '.join(supported)}")


def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} not found; a Hugging Face model directory needs "
                               "config.json next to its *.safetensors files")
    return read_json_object(path, fix="download it again")


def weight_files(directory: Path) -> list[Path]:
    """model.safetensors, or the shards listed by model.safetensors.index.json."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = read_json_object(index, fix="download it again").get("weight_map")
        if (not isinstance(weight_map, dict) or not weight_map
                or not all(isinstance(v, str) for v in weight_map.values())):
            raise CheckpointError(f"{index} has no 'weight_map' object mapping tensor names to "
                                  "shard file names; the file is damaged, download it again")
        # Every name is checked before any shard is opened (see weights.contained).
        paths = [contained_file(directory, name, index, "shard")
                 for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise MissingFileError(f"{index} lists shard(s) {missing} that are not in "
                                   f"{directory}; download all model-*.safetensors files")
        return paths
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt*")):
        raise CheckpointError(f"{directory} holds only pickle weights (*.bin/*.pt), which can run "
                              "code when loaded; download the model's *.safetensors files instead")
    raise MissingFileError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}; download the "
                           "model's safetensors weights into it")


def open_safetensors(path: Path) -> Any:
    """``safe_open`` (memory-mapped), with a damaged header reported as a CheckpointError."""
    try:
        return safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors' own error types for bad headers
        raise CheckpointError(f"{path} is truncated or corrupted ({err}); download it "
                              "again") from err


def _default_dtype(files: list[Path]) -> torch.dtype:
    """The dtype the checkpoint stores (its first tensor's), used when none is requested."""
    with open_safetensors(files[0]) as handle:
        for name in handle.keys():
            return _DTYPES.get(handle.get_slice(name).get_dtype(), torch.float32)
    return torch.float32


def _stream_tensors(files: list[Path], adapter: FamilyAdapter, expected: dict[str, torch.Size],
                    device: torch.device | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Read, rename, fix up and cast each tensor once; validate as we go."""
    loaded: dict[str, torch.Tensor] = {}
    for path in files:
        with open_safetensors(path) as handle:
            for hf_name in handle.keys():
                ours = adapter.hf_to_ours(hf_name)
                if ours is None:
                    continue
                if ours not in expected:
                    if ours == "out_head.weight" and "tok_emb.weight" in expected:
                        continue  # a tied model: the head is the embedding, ignore the copy
                    raise CheckpointError(f"{path}: unexpected tensor {hf_name} (no matching "
                                          "weight in the model config.json describes)")
                if ours in loaded:
                    raise CheckpointError(f"{path}: tensor {hf_name} appears twice")
                stored = handle.get_slice(hf_name).get_dtype()
                if stored not in _DTYPES:
                    raise CheckpointError(f"{path}: tensor {hf_name} has dtype {stored}; "
                                          "supported are F32, F16 and BF16")
                try:
                    tensor = handle.get_tensor(hf_name)
                except Exception as err:
                    raise CheckpointError(f"{path}: cannot read tensor {hf_name} ({err}); the "
                                          "file is truncated or corrupted, download it again"
                                          ) from err
                tensor = adapter.transform_in(hf_name, tensor)
                if tensor.shape != expected[ours]:
                    raise CheckpointError(
                        f"{path}: tensor {hf_name} has shape {tuple(tensor.shape)} but the "
                        f"model built from config.json needs {tuple(expected[ours])}")
                # No .contiguous(): a transposed GPT-2 Conv1D weight stays a strided view of
                # the memory-mapped file instead of a second copy (matmuls take either layout).
                loaded[ours] = tensor.to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(loaded))
    if missing:
        where = ", ".join(map(str, files[:3])) + (f" and {len(files) - 3} more" if len(files) > 3
                                                  else "")
        raise CheckpointError(f"{where} lack(s) tensor(s) {missing[:5]} ({len(missing)} "
                              "missing) that config.json's model needs; download all weight files")
    return loaded


def load_hf_weights(directory: Path, adapter: FamilyAdapter, config: Any, *,
                    device: torch.device | str | None = None,
                    dtype: torch.dtype | str | None = None) -> nn.Module:
    """Build ``adapter``'s model for ``config`` and fill it from the directory's safetensors."""
    files = weight_files(directory)
    dtype = as_dtype(dtype) or _default_dtype(files)
    device = torch.device(device) if device is not None else None
    _check_config_against_files(files, adapter, config, directory)
    with empty_weights():
        model = adapter.build_model(config)
    aliases = tied_aliases(model)
    expected = {n: t.shape for n, t in model.state_dict().items() if n not in aliases}
    weights = _stream_tensors(files, adapter, expected, device, dtype)
    model.load_state_dict(weights, strict=False, assign=True)
    retie(model, aliases)
    model.to(device=device, dtype=dtype)  # buffers (e.g. RoPE tables) follow the weights
    empty = meta_tensor_names(model)
    if empty:
        raise CheckpointError(f"{directory}: tensor(s) {empty[:5]} were not loaded")
    return model.eval()


def _check_config_against_files(files: list[Path], adapter: FamilyAdapter, config: Any,
                                directory: Path) -> None:
    """config.json's layer count and size must match what the weight files hold: checked from
    the safetensors headers before a model is built (a damaged ``n_layer`` of millions would
    otherwise spend minutes building modules only to fail, a damaged width ask for tens of GB)."""
    blocks: set[int] = set()
    stored = 0  # elements the files hold
    for path in files:
        with open_safetensors(path) as handle:
            for hf_name in handle.keys():
                stored += math.prod(handle.get_slice(hf_name).get_shape())
                ours = adapter.hf_to_ours(hf_name) or ""
                head, _, rest = ours.partition(".")
                index = rest.partition(".")[0]
                if head == "trf_blocks" and index.isdigit():
                    blocks.add(int(index))
    wanted = getattr(config, "n_layers", None)
    if isinstance(wanted, int) and blocks and wanted > max(blocks) + 1:  # fewer: named later
        raise CheckpointError(f"{directory / CONFIG_FILE} says {wanted} layers but the weight "
                              f"files hold {max(blocks) + 1}; the config does not belong to "
                              "these weights, download it again")
    where = ", ".join(map(str, files[:3])) + (" ..." if len(files) > 3 else "")
    check_config_fits(config, stored, directory / CONFIG_FILE, where)


def load_hf_dir(path: PathLike, *, device: torch.device | str | None = None,
                dtype: torch.dtype | str | None = None) -> tuple[nn.Module, Any]:
    """Load a Hugging Face model directory (config.json + safetensors) and its tokenizer.

    ``dtype`` defaults to the stored one; the tokenizer is None when the directory has none.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise MissingFileError(f"model directory {directory} does not exist; download one with "
                               "`scratchllm download gpt2`")
    hf_config = read_hf_config(directory)
    adapter = adapter_for_model_type(hf_config.get("model_type"), directory / CONFIG_FILE)
    try:
        config = adapter.config_from_hf(hf_config)
    except (CheckpointError, ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / CONFIG_FILE}: invalid model config ({err})") from err
    model = load_hf_weights(directory, adapter, config, device=device, dtype=dtype)
    from scratchllm.weights.hf_tokenizer import load_hf_tokenizer
    return model, load_hf_tokenizer(directory, hf_config)


def export_hf_dir(*args: Any, **kwargs: Any) -> Path:
    """See ``scratchllm.weights.hf_export.export_hf_dir``."""
    from scratchllm.weights.hf_export import export_hf_dir as export
    return export(*args, **kwargs)
