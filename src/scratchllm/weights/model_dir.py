"""Model directories in scratchllm's own format: save and load (book 5.4).

``scratchllm.weights.auto.open_model`` is the one door every command uses to open a model of
any format; this module is the part of it that reads and writes scratchllm's own layout.

The book saves ``torch.save(model.state_dict())``, a pickle: loading one runs arbitrary code,
and it needs the architecture settings from somewhere else. A *model directory* instead holds::

    DIR/
      config.json        {"format": "scratchllm", "format_version": 1, "family": "gpt" (or
                          any family in scratchllm.model.registry), "config": config.to_dict(), "tokenizer": tokenizer.to_dict() | null,
                          "metadata": {...free-form: step, val_loss, ...}}
      model.safetensors  model.state_dict() as safetensors (no code, just tensors); a tied
                         output head (GPTConfig.tie_weights) is stored once as tok_emb.weight
      tokenizer.json     only for a Hugging Face tokenizer (its spec points here)
      .scratchllm        marker: scratchllm wrote this folder (see scratchllm.utils.outputs)

Every directory is written into a hidden temp directory beside its final place, fsynced, then
renamed into place, so an interrupted save leaves the previous directory intact.
``load_model_dir`` also accepts a training run directory (see ``scratchllm.train.state``) and
then loads its ``latest/`` model, so ``scratchllm generate --model RUN_DIR`` works.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError, MissingFileError
from scratchllm.model.quantize import as_dtype
from scratchllm.model.registry import build_model, config_from_dict, family_of, get_family
from scratchllm.weights.contained import contained_file
from scratchllm.weights.meta import check_config_fits, empty_weights, retie
from scratchllm.utils.atomic import atomic_directory, fsync_file, give_plain_mode, write_json
from scratchllm.utils.json_files import read_json_object
from scratchllm.utils.outputs import MODEL, check_output_dir, owner_kind, write_marker

FORMAT = "scratchllm"
FORMAT_VERSION = 1
FAMILY = "gpt"  # the default family; others come from scratchllm.model.registry
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LATEST_DIR = "latest"
HEADED_SUBDIR = "model"  # where finetune classify/reward put their model

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------- saving
def tied_aliases(model: nn.Module) -> dict[str, str]:
    """Map each duplicate parameter name to the first name that holds the same tensor."""
    first_name: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            aliases[name] = first_name[id(param)]
        else:
            first_name[id(param)] = name
    return aliases


def weights_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied copies dropped, as contiguous CPU tensors (safetensors' rules)."""
    aliases = tied_aliases(model)
    return {name: tensor.detach().to("cpu").contiguous()
            for name, tensor in model.state_dict().items() if name not in aliases}


def config_header(model: nn.Module, tokenizer: Any = None, metadata: dict | None = None,
                  generation: dict | None = None) -> dict[str, Any]:
    """The config.json contents; checked to be JSON-serialisable before anything is written."""
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(config, "to_dict", None)):
        raise ConfigError("model has no config with to_dict() in .config; only scratchllm "
                          "models (GPTModel, LlamaModel, ...) can be saved as a model directory")
    family = family_of(model)
    tokenizer_spec = None
    if tokenizer is not None:
        if not callable(getattr(tokenizer, "to_dict", None)):
            raise ConfigError(f"tokenizer {type(tokenizer).__name__} has no to_dict(); pass a "
                              "scratchllm tokenizer (scratchllm.tokenizers.get_tokenizer)")
        tokenizer_spec = tokenizer.to_dict()
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "family": family,
              "config": config.to_dict(), "tokenizer": tokenizer_spec,
              "metadata": dict(metadata or {})}
    if generation:  # e.g. {"eos_ids": [...]} kept from a Hugging Face source model
        header["generation"] = dict(generation)
    try:
        json.dumps(header)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"checkpoint metadata/tokenizer spec is not JSON-serialisable ({err}); "
                          "pass only str/int/float/bool/None/list/dict values") from err
    return header


def write_model_files(directory: Path, model: nn.Module, tokenizer: Any = None,
                      metadata: dict | None = None, generation: dict | None = None) -> None:
    """Write config.json + model.safetensors into an existing (temporary) directory."""
    header = config_header(model, tokenizer, metadata, generation)
    if callable(getattr(tokenizer, "save_files", None)):  # HF tokenizer: copy tokenizer.json
        header["tokenizer"] = tokenizer.save_files(directory)
    write_marker(directory, MODEL)
    weights_path = directory / WEIGHTS_FILE
    safetensors.torch.save_file(weights_to_save(model), str(weights_path),
                                metadata={"format": "pt"})
    give_plain_mode(weights_path)
    fsync_file(weights_path)
    write_json(directory / CONFIG_FILE, header)


def _check_replaceable(out_dir: Path) -> None:
    """Replace only an earlier scratchllm model directory; never a run or anyone else's files."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        found, _ = owner_kind(out_dir)
        if found not in (None, MODEL.name):
            raise CheckpointError(f"{out_dir} is a scratchllm {found} folder; save the model to "
                                  f"a subfolder such as {out_dir / 'final'} instead")
    try:
        check_output_dir(out_dir, MODEL, overwrite=True, what="model directory")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def save_model_dir(out_dir: PathLike, model: nn.Module, tokenizer: Any = None,
                   metadata: dict | None = None, generation: dict | None = None) -> Path:
    """Save ``model`` (and its tokenizer's spec) as a model directory, atomically (book 5.4).

    An existing model directory at ``out_dir`` is replaced only once the new one is complete.
    Returns the directory's path.
    """
    out_dir = Path(out_dir).expanduser()
    _check_replaceable(out_dir)
    config_header(model, tokenizer, metadata, generation)  # fail before touching the disk
    with atomic_directory(out_dir) as tmp:
        write_model_files(tmp, model, tokenizer, metadata, generation)
    return out_dir


# ---------------------------------------------------------------------------- loading
def read_header(directory: Path) -> dict[str, Any]:
    """Read and validate config.json of a model directory."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} not found; {directory} is not a model directory "
                               "(expected config.json and model.safetensors)")
    header = read_json_object(path, fix="the file is damaged, re-save the model")
    if header.get("format") != FORMAT:
        found = header.get("format")
        raise CheckpointError(f"{path} has unknown format {found!r}; expected {FORMAT!r} "
                              "(a directory written by scratchllm's save_model_dir)")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}; this scratchllm reads "
                              f"version {FORMAT_VERSION} or older, upgrade scratchllm")
    try:
        get_family(header.get("family", FAMILY))
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if not isinstance(header.get("config"), dict):
        raise CheckpointError(f"{path} has no 'config' object with the model's hyperparameters")
    return header


def config_from_header(header: dict[str, Any], directory: Path) -> Any:
    try:
        return config_from_dict(header.get("family", FAMILY), header["config"])
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{directory / CONFIG_FILE}: invalid model config ({err})") from err


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Load model.safetensors to CPU; a damaged file becomes a CheckpointError naming it."""
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} not found; the model directory is incomplete, re-save it")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path} is truncated or corrupted ({err}); re-save the model or "
                              "restore the file from a backup") from err


def check_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Every tensor the model needs is present with the right shape, and nothing else."""
    aliases = tied_aliases(model)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()
                if name not in aliases}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if any(name.endswith((".lora_A", ".lora_B")) for name in unexpected):
        raise CheckpointError(f"{path} is a LoRA run's checkpoint: the base weights and the "
                              "adapters stored apart for --resume, which no model loader "
                              "reads; open the run's latest/ (the merged model), or continue "
                              "the run with --resume")
    if missing:
        raise CheckpointError(f"{path} lacks tensor(s) {missing[:5]} (of {len(missing)} missing) "
                              "that the model config needs; the file is incomplete")
    if unexpected:
        raise CheckpointError(f"{path} has unexpected tensor(s) {unexpected[:5]} not in this "
                              "model; the config.json does not describe these weights")
    floating = {name: t.is_floating_point() for name, t in model.state_dict().items()}
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(weights[name].shape)} "
                                  f"in the file but {shape} in the model built from config.json")
        if weights[name].is_floating_point() != floating[name]:  # else torch fails mid-forward
            raise CheckpointError(f"{path}: tensor {name} has dtype {weights[name].dtype}, "
                                  "which this model cannot use; the file holds other weights")


def load_weights_into(model: nn.Module, directory: Path) -> None:
    """Copy a model directory's weights into an existing model in place (strict)."""
    weights = read_weights(directory)
    check_weights(model, weights, directory / WEIGHTS_FILE)
    model.load_state_dict(weights, strict=False)  # only the tied aliases are absent


def resolve_model_dir(path: PathLike) -> Path:
    """A model directory, or a run directory's ``latest/`` model (or newest checkpoint)."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise MissingFileError(f"model directory {directory} does not exist; check the path or "
                               "train one with `scratchllm pretrain --out DIR`")
    if not directory.is_dir():
        raise MissingFileError(f"{directory} is a file; pass the directory that holds "
                               "config.json and model.safetensors")
    if (directory / CONFIG_FILE).exists():
        return directory
    if (directory / LATEST_DIR / CONFIG_FILE).exists():
        return directory / LATEST_DIR
    from scratchllm.weights.run_layout import latest_checkpoint  # a run whose latest/ is gone
    newest = latest_checkpoint(directory)
    if newest is None and (directory / HEADED_SUBDIR / CONFIG_FILE).exists():
        return directory / HEADED_SUBDIR  # a classifier / reward-model run keeps it in model/
    if newest is None and (directory / "best" / CONFIG_FILE).exists():
        # stopped (killed, or out of disk) before its first checkpoint: say where the last
        # good model is rather than "not a model directory"; best/ is not the latest state,
        # so it is not loaded in its place
        raise MissingFileError(f"{directory} is a run stopped before its first checkpoint: it "
                               f"has no latest/ model; its best model so far is in "
                               f"{directory / 'best'}: pass that folder")
    return newest if newest is not None else directory


def load_model_dir(path: PathLike, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | str | None = None) -> tuple[nn.Module, Any]:
    """Rebuild a model (eval mode) and its tokenizer (or None) from a model directory.

    ``path`` may also be a training run directory: its ``latest/`` model is loaded.
    Weights keep their saved dtype unless ``dtype`` is given, and go to ``device`` (default CPU).
    """
    directory = resolve_model_dir(path)
    header = read_header(directory)
    metadata = header.get("metadata") or {}
    if "classifier" in metadata:
        raise CheckpointError(
            f"{directory} holds a classifier (its output head predicts labels, not tokens); "
            "use `scratchllm classify` / scratchllm.finetune.classifier_model.load_classifier"
        )
    if "reward_model" in metadata:  # finetune.reward_model.REWARD_KEY (no import upward)
        raise CheckpointError(
            f"{directory} holds a reward model (its head scores answers, it predicts no "
            "tokens), not a language model; use it with `scratchllm evaluate reward "
            "--reward-model DIR` or `scratchllm finetune ppo --reward-model DIR`"
        )
    config = config_from_header(header, directory)
    weights = read_weights(directory)
    check_config_fits(config, sum(t.numel() for t in weights.values()),
                      directory / CONFIG_FILE, str(directory / WEIGHTS_FILE))
    with empty_weights():  # no time spent on random init that is overwritten anyway
        model = build_model(header.get("family", FAMILY), config)
    check_weights(model, weights, directory / WEIGHTS_FILE)
    aliases = tied_aliases(model)
    model.load_state_dict(weights, strict=False, assign=True)
    retie(model, aliases)  # assign=True replaced the shared tensor
    model.to(device=device, dtype=as_dtype(dtype))
    model.eval()
    return model, tokenizer_from_header(header, directory)


def tokenizer_from_header(header: dict[str, Any], directory: Path) -> Any:
    spec = header.get("tokenizer")
    if spec is None:
        return None
    if isinstance(spec, dict) and spec.get("type") == "hf":  # its file must be one of ours
        contained_file(directory, spec.get("tokenizer_file"), directory / CONFIG_FILE,
                       "tokenizer file")
    try:
        from scratchllm.tokenizers import tokenizer_from_dict
        return tokenizer_from_dict(spec, base_dir=directory)
    except MissingFileError:  # e.g. vocabulary files: that message already says what to do
        raise
    except Exception as err:
        raise CheckpointError(f"{directory / CONFIG_FILE}: cannot rebuild the tokenizer from "
                              f"its spec ({err}); re-save the model with a scratchllm "
                              "tokenizer") from err
