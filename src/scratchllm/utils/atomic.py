"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

Write to a temporary file in the same directory, flush, fsync, then ``os.replace`` it over
the target (a rename within one filesystem is atomic). A crash leaves only a ``.tmp-*`` file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what a plain open() would give; mkstemp gives 0600


class AtomicWriter:
    """A binary file that appears at ``path`` only when :meth:`commit` is called."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent)
        self.tmp_path = Path(tmp)
        os.chmod(self.tmp_path, _FILE_MODE)
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes | memoryview) -> None:
        self.file.write(data)

    def commit(self) -> None:
        """Flush to disk and move the temporary file over the target."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        """Drop the temporary file (after an error); the target is left untouched."""
        if not self.file.closed:
            self.file.close()
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (JSON sidecars) atomically, UTF-8 encoded."""
    with AtomicWriter(path) as writer:
        writer.write(text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: object) -> Path:
    """Write ``value`` as indented UTF-8 JSON atomically (results files, sidecars)."""
    import json

    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    return Path(path)
