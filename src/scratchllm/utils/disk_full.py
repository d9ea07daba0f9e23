"""Recognising a full disk, whichever library hit it (plain OSError, safetensors' Rust error,
torch's RuntimeError, numpy's short write), so every command can say so in one line."""

from __future__ import annotations

import errno
import re

# errno values of a full disk or an exhausted quota, and how Rust-backed writers (safetensors)
# spell them in their messages, since they raise their own exception types.
FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e)
FULL_TEXTS = ("no space left on device", "disk quota exceeded",
              *(f"os error {e})" for e in FULL_ERRNOS))
# numpy's ndarray.tofile (the gguf writer) reports a short write without an errno; a regular
# file is only ever written short when the disk or quota is full
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def is_disk_full(err: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, raised directly or wrapped by a library (safetensors, torch)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return True
        text = str(current).lower()
        if any(t in text for t in FULL_TEXTS):
            return True
        if isinstance(current, OSError) and current.errno is None and _SHORT_WRITE.match(text):
            return True
        current = current.__cause__ or current.__context__
    return False
