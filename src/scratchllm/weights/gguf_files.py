"""GGUF output files: which ones scratchllm wrote, and which paths an export may write.

A GGUF export is one file, not a folder, so it cannot carry ``utils.outputs``' marker file;
the mark is a metadata entry instead (``scratchllm.exported_by``, written before any array so
a few hundred bytes decide). The rules are the folders' rules: a new path is written, an
earlier export is replaced only with ``overwrite``, anyone else's file never.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from scratchllm.errors import ConfigError

OWNER_KEY = "scratchllm.exported_by"
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING = 8


def is_scratchllm_gguf(path: Path, scan: int = 8) -> bool:
    """True when ``path`` is a GGUF file whose first metadata entries name scratchllm as its
    writer. Reads a few hundred bytes: ``gguf.GGUFReader`` would parse every token string."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return False
    if head[:4] != b"GGUF":
        return False
    try:
        n_kv = struct.unpack_from("<Q", head, 16)[0]
        offset = 24
        for _ in range(min(n_kv, scan)):
            (size,) = struct.unpack_from("<Q", head, offset)
            key = head[offset + 8:offset + 8 + size].decode("utf-8")
            offset += 8 + size
            (vtype,) = struct.unpack_from("<I", head, offset)
            offset += 4
            if vtype == _STRING:
                (size,) = struct.unpack_from("<Q", head, offset)
                value = head[offset + 8:offset + 8 + size].decode("utf-8")
                offset += 8 + size
                if key == OWNER_KEY:
                    return value.startswith("scratchllm")
            elif vtype in _SCALAR_SIZES:
                offset += _SCALAR_SIZES[vtype]
            else:  # an array: the owner key comes before any
                return False
    except (struct.error, UnicodeDecodeError):
        return False
    return False


def check_gguf_target(path: str | os.PathLike, *, overwrite: bool = False,
                      what: str = "OUT") -> Path:
    """Refuse, before any work, a target scratchllm may not write: a folder, a name without
    the ``.gguf`` suffix, anyone else's file (even with --overwrite), or an earlier export
    without --overwrite.

    Why the suffix: llama.cpp's tools, Ollama and the README name a GGUF ``*.gguf``, and a bare
    ``out/sft`` was most likely meant as a folder (``--to hf`` and ``--to ollama`` take one);
    writing a suffix-less file there surprises both the user and the next command."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(f"{what} {target} is a folder; give the path of a .gguf file")
    if target.suffix.lower() != ".gguf":
        raise ConfigError(f"{what} {target} does not end in .gguf; a GGUF export is one file "
                          f"named *.gguf: give e.g. {target}.gguf")
    if target.exists():
        if not is_scratchllm_gguf(target):
            raise ConfigError(f"{what} {target} exists and was not written by scratchllm; "
                              "nothing was changed: choose another file name")
        if not overwrite:
            raise ConfigError(f"{what} {target} holds an earlier scratchllm export; pass "
                              "--overwrite to replace it, or choose another file name")
    return target
