"""A full disk in any command: recognised whoever raised it, temp files gone, one line."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from scratchllm.cli import main as cli_main
from scratchllm.utils.atomic import AtomicWriter
from scratchllm.utils.disk_full import is_disk_full


def test_numpys_short_write_counts_as_a_full_disk(tmp_path):
    """gguf's writer uses ndarray.tofile, whose short write carries no errno: the exact
    message numpy raises is matched, other errno-less OSErrors are not."""
    message = "3216448 requested and 3127504 written"
    assert is_disk_full(OSError(message))
    assert is_disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert is_disk_full(RuntimeError("safetensors: No space left on device (os error 28)"))
    assert not is_disk_full(OSError("3216448 requested and 3127504 written, then more"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    with open(tmp_path / "ok.bin", "wb") as handle:  # a real tofile writes everything
        np.arange(4, dtype=np.float32).tofile(handle)


def test_a_close_that_fails_still_removes_the_temp_file(tmp_path):
    """On a full disk the buffered tail fails at close(): the temp file must go anyway."""
    writer = AtomicWriter(tmp_path / "report.json")
    writer.write(b"x" * 100)

    class FailsAtClose:  # the file as a full disk leaves it: close() cannot flush its tail
        closed = False

        def __init__(self, real) -> None:
            self.real = real

        def close(self) -> None:
            self.real.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer.file = FailsAtClose(writer.file)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_the_cli_says_disk_full_in_one_line(monkeypatch, capsys, tmp_path):
    from scratchllm.cli import plot

    def full(args) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(plot, "run", full)
    assert cli_main.main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scratchllm plot: error: the disk is full")

    def other(args) -> int:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(plot, "run", other)
    with pytest.raises(PermissionError):  # other OS errors are not disguised as a full disk
        cli_main.main(["plot", str(tmp_path)])
