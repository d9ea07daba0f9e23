"""Temp files and folders a killed writer left are removed by the next writer of that path;
a live writer's are not (its pid is in the name)."""

from __future__ import annotations

import os
import subprocess
import sys

from scratchllm.utils.atomic import AtomicWriter, atomic_directory, temp_name


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_leftovers_go_and_a_live_ones_stay(tmp_path):
    target = tmp_path / "model"
    dead, live = _dead_pid(), os.getppid()  # our parent runs as long as we do
    (tmp_path / f".model.tmp-{dead}-abc").mkdir()
    (tmp_path / f".model.tmp-{dead}-abc" / "model.safetensors").write_bytes(b"half")
    (tmp_path / f".model.tmp-{live}-xyz").mkdir()
    (tmp_path / ".model.tmp-oldstyle").mkdir()  # before pids were in the name
    (tmp_path / f".other.tmp-{dead}-abc").mkdir()  # another target's: not ours to judge
    with atomic_directory(target) as tmp:
        assert tmp.name.startswith(temp_name(target))
        (tmp / "config.json").write_text("{}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f".model.tmp-{live}-xyz", f".other.tmp-{dead}-abc", "model"]

    (tmp_path / f".notes.txt.tmp-{dead}-q1").write_text("half")
    with AtomicWriter(tmp_path / "notes.txt") as writer:
        writer.write(b"done")
    assert not (tmp_path / f".notes.txt.tmp-{dead}-q1").exists()
    assert (tmp_path / "notes.txt").read_bytes() == b"done"
