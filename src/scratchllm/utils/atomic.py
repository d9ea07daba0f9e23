"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

Write to a temporary file in the same directory, flush, fsync, then ``os.replace`` it over
the target (a rename within one filesystem is atomic). A crash leaves only a ``.tmp-*`` file.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import shutil
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from scratchllm.errors import ConfigError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what a plain open() would give; mkstemp gives 0600
_DIR_MODE = 0o777 & ~_current_umask()   # what a plain mkdir() would give; mkdtemp gives 0700


def temp_name(path: Path) -> str:
    """The prefix of ``path``'s temp file or folder: hidden, and naming the writer's pid, so a
    later writer can tell a dead process's leftover from a live one's work in progress."""
    return f".{path.name}.tmp-{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # Windows' os.kill(pid, 0) would end it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: someone else's live process
        return True
    return True


def aside_name(path: Path) -> str:
    """Where ``replace_directory`` parks the old ``path`` while the new one moves in (pid
    named, like ``temp_name``)."""
    return f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _dead_leftovers(path: Path, kind: str) -> list[Path]:
    prefix = f".{path.name}.{kind}-"
    try:
        siblings = [c for c in path.parent.iterdir() if c.name.startswith(prefix)]
    except OSError:
        return []
    dead = []
    for child in siblings:
        pid = child.name[len(prefix):].split("-", 1)[0]
        if not (pid.isdigit() and _alive(int(pid))):
            dead.append(child)
    return dead


def _remove_tree_or_file(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def remove_dead_temps(path: Path) -> None:
    """Clean up after a writer of ``path`` that was killed mid-write (SIGKILL, a crash):
    nothing cleaned up after it, and a model-sized temp folder would otherwise stay in the
    user's folder for good. Temps of a process still running are left alone.

    A writer killed between ``replace_directory``'s two renames left no ``path`` at all, only
    the old one parked aside: that last good state is put back first."""
    asides = _dead_leftovers(path, "old")
    if asides and not os.path.lexists(path):
        newest = max(asides, key=lambda p: p.stat().st_mtime)
        os.replace(newest, path)
        asides.remove(newest)
    for child in _dead_leftovers(path, "tmp") + asides:
        _remove_tree_or_file(child)


class AtomicWriter:
    """A binary file that appears at ``path`` only when :meth:`commit` is called."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.is_dir():  # os.replace would fail only at commit, after all the work
            raise ConfigError(f"{self.path} is a folder; give a file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)  # as atomic_directory does
        remove_dead_temps(self.path)
        fd, tmp = tempfile.mkstemp(prefix=temp_name(self.path), dir=self.path.parent)
        self.tmp_path = Path(tmp)
        os.chmod(self.tmp_path, _FILE_MODE)
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes | memoryview) -> None:
        self.file.write(data)

    def commit(self) -> None:
        """Flush to disk and move the temporary file over the target (a failure, e.g. a full
        disk, removes the temporary file and leaves the target as it was)."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the temporary file (after an error); the target is left untouched."""
        try:
            if not self.file.closed:
                self.file.close()  # flushes what is buffered: on a full disk that fails too
        except OSError:
            pass
        finally:
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
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    return Path(path)


# ---------------------------------------------------------------------------- directories
def fsync_dir(path: Path) -> None:
    """Make a rename or new file inside ``path`` durable (a no-op where dirs can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def give_plain_mode(path: Path) -> None:
    """Give a file another library wrote the mode a plain open() would (safetensors >= 0.7
    writes 0600, which hides a saved model from every other user, container or web server)."""
    os.chmod(path, _FILE_MODE)


def fsync_file(path: Path) -> None:
    """Flush a file some other library wrote (e.g. safetensors) to disk."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def write_json(path: Path, value: Any) -> None:
    """Write JSON and fsync it (atomicity comes from the enclosing temp directory)."""
    text = json.dumps(value, indent=2, sort_keys=False) + "\n"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


_RENAME_EXCHANGE = 2  # linux/fs.h; renameat2() swaps two paths in one step
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2``, looked up once; None off Linux or in a libc without the wrapper
    (glibc < 2.28, some musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    return renameat2


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap what ``a`` and ``b`` name in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the system or filesystem cannot, and nothing moved.

    Why: replacing a folder with two renames leaves a moment with no folder at all, and a
    writer killed in it leaves none until the next write; a swap has no such moment."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
        return False  # kernel or filesystem without the flag: the caller falls back
    raise OSError(err, os.strerror(err), str(b))


def replace_directory(new: Path, final: Path) -> None:
    """Put folder ``new`` in place of ``final``: a reader sees the old folder or the new one.

    An existing ``final`` is swapped with ``new`` in one step where the system can
    (``exchange_paths``), then the old contents, now under ``new``'s temp name, are deleted;
    a writer killed before that leaves only a dead temp, removed by the next write. Elsewhere
    ``os.replace``, which cannot overwrite a non-empty folder, needs two renames: the old
    ``final`` is parked under a hidden name first and put back if installing the new fails
    (or, after a kill, by the next write's ``remove_dead_temps``).
    """
    if os.path.lexists(final) and exchange_paths(new, final):
        fsync_dir(final.parent)
        _remove_tree_or_file(new)
        return
    aside = None
    if final.exists():
        aside = final.with_name(aside_name(final))
        os.replace(final, aside)
    try:
        os.replace(new, final)
    except BaseException:
        if aside is not None:
            os.replace(aside, final)
        raise
    fsync_dir(final.parent)
    if aside is not None:
        _remove_tree_or_file(aside)


def new_temp_dir(final: Path) -> Path:
    """An empty temp folder beside ``final`` that ``replace_directory`` can put in its place
    (dead writers' leftovers of ``final`` are cleaned first). Refused for a mount point (a
    Docker volume, say): a folder replaced whole cannot be one, so say it before any work."""
    if os.path.ismount(final):
        raise ConfigError(f"{final} is a mount point, and scratchllm replaces this output folder "
                          "whole; give a folder inside it (e.g. "
                          f"{final / 'out'}) instead")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(final)
    tmp = Path(tempfile.mkdtemp(prefix=temp_name(final), dir=final.parent))
    os.chmod(tmp, _DIR_MODE)  # the finished folder reads like any other the user makes
    return tmp


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temp dir beside ``final``; on success it replaces ``final``, on error it vanishes."""
    tmp = new_temp_dir(final)
    try:
        yield tmp
        fsync_dir(tmp)
        replace_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
