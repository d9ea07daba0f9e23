"""Output folders: scratchllm writes only where it may, and deletes only what it wrote.

Every folder a command writes (a training or fine-tuning run, an export, a model directory)
carries a small marker file, ``.scratchllm``, naming the kind of output and the top-level
entries that kind consists of. The rules, the same for every command:

* a new path or an empty folder is claimed (marked) and used;
* a folder holding files scratchllm did not write (no marker) is refused: nothing is touched;
* a marked folder is reused only with ``resume`` (same kind) or replaced with ``overwrite``,
  and ``overwrite`` refuses too if the folder also holds entries the marker does not list
  (a user's notes beside a run are never deleted);
* a folder written by an older scratchllm without markers is recognised by its content
  (a ``LATEST`` pointer and ``checkpoints/``, or a ``config.json`` in scratchllm's format).
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from scratchllm.errors import ConfigError
from scratchllm.utils.atomic import atomic_write_json, new_temp_dir, replace_directory

MARKER = ".scratchllm"
# Leftovers of an interrupted atomic write (utils.atomic): always scratchllm's own.
_TEMP_PATTERNS = (".*.tmp-*", ".*.old-*", MARKER)


@dataclass(frozen=True)
class OutputKind:
    """A kind of output folder: its name and the top-level entries (glob patterns) it holds."""

    name: str
    entries: tuple[str, ...]


MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "generation_config.json", "special_tokens_map.json",
               "vocab.json", "merges.txt", "adapter_config.json", "adapter_model.safetensors")
MODEL = OutputKind("model", MODEL_FILES)
PRETRAIN_RUN = OutputKind("pretrain", ("train_config.json", "metrics.jsonl", "*.png",
                                       "checkpoints", "latest", "best", "LATEST"))
FINETUNE_RUN = OutputKind("finetune", ("train_config.json", "finetune_config.json",
                                       "metrics.jsonl", "*.png", "checkpoints", "latest", "best",
                                       "LATEST", "model", "adapter", "adapter.safetensors",
                                       "adapter.json", "lora.safetensors", "lora.json",
                                       "results.json", "value_head.safetensors", "members",
                                       "test_responses.json", "*.jsonl"))
PREPARED = OutputKind("prepared", ("train.bin", "val.bin", "train.json", "val.json"))
HF_EXPORT = OutputKind("export-hf", MODEL_FILES + ("model-*-of-*.safetensors",
                                                   "model.safetensors.index.json",
                                                   "added_tokens.json"))


def read_marker(directory: Path) -> dict | None:
    """The marker's contents, or None when the folder has no (readable) marker."""
    try:
        value = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("kind"), str) else None


def write_marker(directory: Path, kind: OutputKind) -> None:
    """Mark ``directory`` as scratchllm's output of ``kind`` (atomic, fsynced)."""
    from scratchllm import __version__

    atomic_write_json(directory / MARKER, {
        "kind": kind.name, "entries": list(kind.entries), "written_by": f"scratchllm {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def _legacy_kind(directory: Path) -> str | None:
    """Recognise folders that older scratchllm versions wrote before markers existed."""
    if (directory / "LATEST").is_file() and (directory / "checkpoints").is_dir():
        return PRETRAIN_RUN.name
    try:
        header = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(header, dict) and header.get("format") == "scratchllm":
        return MODEL.name
    return None


def _matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in (*patterns, *_TEMP_PATTERNS))


def foreign_entries(directory: Path, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Top-level names in ``directory`` that no pattern of its kind accounts for."""
    return sorted(child.name for child in directory.iterdir() if not _matches(child.name, patterns))


def owner_kind(directory: Path) -> tuple[str | None, tuple[str, ...]]:
    """(kind, entry patterns) of a scratchllm folder, (None, ()) for anyone else's."""
    marker = read_marker(directory)
    if marker is not None:
        entries = marker.get("entries")
        patterns = tuple(e for e in entries if isinstance(e, str)) if isinstance(entries, list) else ()
        return marker["kind"], patterns
    legacy = _legacy_kind(directory)
    if legacy is None:
        return None, ()
    known = {k.name: k.entries for k in (MODEL, PRETRAIN_RUN, FINETUNE_RUN, HF_EXPORT, PREPARED)}
    return legacy, known[legacy]


def check_output_dir(path: str | os.PathLike, kind: OutputKind, *, overwrite: bool = False,
                     resume: bool = False, what: str = "--out", can_resume: bool = True) -> str:
    """Decide, without changing anything, whether ``kind`` may be written at ``path``.

    ``can_resume=False`` (a run with no checkpoint left, e.g. killed during its first save)
    keeps ``--resume`` out of the refusal's advice: it would only be refused next.

    Returns ``"new"`` (absent or empty), ``"resume"`` (ours, same kind, ``resume`` asked) or
    ``"replace"`` (ours, ``overwrite`` asked, nothing foreign inside). Raises ConfigError
    with what to do otherwise.
    """
    directory = Path(path).expanduser()
    if not directory.exists():
        return "new"
    if not directory.is_dir():
        raise ConfigError(f"{what} {directory} exists and is a file; choose a folder path")
    if not any(directory.iterdir()):
        return "new"
    found, patterns = owner_kind(directory)
    if found is None:
        raise ConfigError(f"{what} {directory} is not empty and was not written by scratchllm "
                          f"(no {MARKER} marker); nothing was changed: choose a new or empty "
                          "folder")
    if resume and found == kind.name:
        return "resume"
    if not overwrite:
        # only training runs resume; prepare, export and model directories have no --resume
        resumable = can_resume and found == kind.name and kind in (PRETRAIN_RUN, FINETUNE_RUN)
        hint = "--resume to continue it, " if resumable else ""
        raise ConfigError(f"{what} {directory} already holds a scratchllm {found} output; pass "
                          f"{hint}--overwrite to replace it, or choose another folder")
    foreign = foreign_entries(directory, patterns)
    if foreign:
        raise ConfigError(f"{what} {directory} holds {len(foreign)} entr"
                          f"{'y' if len(foreign) == 1 else 'ies'} scratchllm did not write "
                          f"({', '.join(foreign[:5])}); --overwrite never deletes those: move "
                          "them away or choose another folder")
    return "replace"


def clear_output_dir(directory: Path) -> None:
    """Empty a folder ``check_output_dir`` approved for replacing: an empty folder takes its
    place in one step where the system can (``replace_directory``), then the old is deleted."""
    replace_directory(new_temp_dir(directory), directory)


def prepare_output_dir(path: str | os.PathLike, kind: OutputKind, *, overwrite: bool = False,
                       resume: bool = False, what: str = "--out") -> tuple[Path, str]:
    """Check, then create/clear and mark ``path`` for ``kind``; return (folder, decision)."""
    directory = Path(path).expanduser()
    decision = check_output_dir(directory, kind, overwrite=overwrite, resume=resume, what=what)
    if decision == "replace":
        clear_output_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if decision != "resume" or read_marker(directory) is None:
        write_marker(directory, kind)
    return directory, decision


def check_output_file(path: str | os.PathLike, is_ours: Callable[[Path], bool], *,
                      what: str = "--out") -> Path:
    """Refuse, before any work, a file target scratchllm may not replace: a folder, a path
    under a file, or an existing file ``is_ours`` does not recognise as this command's output
    (a user's file of the same name is never overwritten). Returns the path."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(f"{what} {target} is a folder; give a file path")
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{what} {target}: {parent} is a file, not a folder; choose another "
                          "path")
    if target.exists() and not is_ours(target):
        raise ConfigError(f"{what} {target} exists and was not written by scratchllm; nothing "
                          "was changed: choose another file name")
    return target
