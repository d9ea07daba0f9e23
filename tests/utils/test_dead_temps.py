"""Temp files and folders a killed writer left are removed by the next writer of that path;
a live writer's are not (its pid is in the name)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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


def test_a_writer_killed_between_the_two_renames_gets_its_old_folder_back(tmp_path):
    """``replace_directory`` parks the old folder aside, then moves the new one in: a SIGKILL
    between the two left no folder at all. The next writer of that path puts the last good
    one back before anything else; a live writer's parked folder is left alone."""
    from scratchllm.utils.atomic import remove_dead_temps

    target = tmp_path / "latest"
    parked = tmp_path / f".latest.old-{_dead_pid()}-abcd1234"
    parked.mkdir()
    (parked / "config.json").write_text('{"old": true}')
    (tmp_path / f".latest.tmp-{_dead_pid()}-x").mkdir()  # the new one, half written
    remove_dead_temps(target)
    assert (target / "config.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]

    live = tmp_path / f".latest.old-{os.getppid()}-abcd1234"  # mid-swap in a live process
    live.mkdir()
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text('{"new": true}')
    assert (target / "config.json").read_text() == '{"new": true}'
    assert live.is_dir()
    assert not any(p.name.startswith(".latest.old-") and p != live for p in tmp_path.iterdir())


def test_replacing_a_folder_never_leaves_its_path_empty(tmp_path, monkeypatch):
    """Where the kernel can swap two paths in one step (Linux renameat2), a reader, or a
    writer killed at any moment, finds the old folder or the new one, never none: every
    rename ``atomic_directory`` makes happens with ``latest`` in place."""
    from scratchllm.utils import atomic

    target = tmp_path / "latest"
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text('{"v": 1}')
    real_replace, seen = os.replace, []

    def watched_replace(src, dst):
        seen.append(target.is_dir())
        real_replace(src, dst)
        seen.append(target.is_dir())

    monkeypatch.setattr(atomic.os, "replace", watched_replace)
    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir(), probe_b.mkdir()
    if not atomic.exchange_paths(probe_a, probe_b):
        pytest.skip("this kernel or filesystem cannot swap two paths in one step")
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text('{"v": 2}')
    assert all(seen)
    assert (target / "config.json").read_text() == '{"v": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "latest"]


def test_exchange_paths_swaps_two_folders_and_reports_a_missing_one(tmp_path):
    from scratchllm.utils.atomic import exchange_paths

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("from a")
    (b / "y").write_text("from b")
    if not exchange_paths(a, b):
        pytest.skip("this kernel or filesystem cannot swap two paths in one step")
    assert [p.name for p in a.iterdir()] == ["y"] and [p.name for p in b.iterdir()] == ["x"]
    with pytest.raises(FileNotFoundError):
        exchange_paths(tmp_path / "missing", a)


def test_without_the_swap_two_renames_still_replace_the_folder(tmp_path, monkeypatch):
    """Other systems (macOS, Windows, old kernels) take the two-rename path."""
    from scratchllm.utils import atomic

    monkeypatch.setattr(atomic, "exchange_paths", lambda a, b: False)
    target = tmp_path / "latest"
    for version in (1, 2):
        with atomic_directory(target) as tmp:
            (tmp / "config.json").write_text(f'{{"v": {version}}}')
    assert (target / "config.json").read_text() == '{"v": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


_REWRITER = """
import sys, time
from pathlib import Path
from scratchllm.utils.atomic import atomic_directory
target, version = Path(sys.argv[1]), 0
print("ready", flush=True)
while True:
    version += 1
    with atomic_directory(target) as tmp:
        (tmp / "weights.bin").write_bytes(bytes([version % 256]) * 200_000)
        (tmp / "config.json").write_text(str(version % 256))
"""


def test_a_writer_sigkilled_at_any_moment_leaves_a_whole_folder(tmp_path):
    """A real process rewrites a folder in a loop and is SIGKILLed at 12 moments: each time the
    folder is there and whole (its two files agree) before anything is cleaned up, and the
    next writer removes what the killed one left."""
    import random
    import signal
    import time

    from scratchllm.utils.atomic import exchange_paths, remove_dead_temps

    target, probe = tmp_path / "latest", tmp_path / "probe"
    target.mkdir(), probe.mkdir()
    if not exchange_paths(target, probe):
        pytest.skip("this kernel or filesystem cannot swap two paths in one step")
    probe.rmdir()
    (target / "weights.bin").write_bytes(bytes([0]) * 200_000)
    (target / "config.json").write_text("0")
    rng = random.Random(0)
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", _REWRITER, str(target)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.01, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        version = int((target / "config.json").read_text())  # before any clean-up
        assert (target / "weights.bin").read_bytes() == bytes([version]) * 200_000
        remove_dead_temps(target)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_a_mount_point_is_refused_before_any_work(monkeypatch, tmp_path):
    """A folder replaced whole cannot be a mount point (the swap would fail after all the work):
    one line saying to write inside it."""
    from scratchllm.errors import ConfigError

    target = tmp_path / "volume"
    target.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(target))
    with pytest.raises(ConfigError, match="is a mount point.*give a folder inside it"):
        with atomic_directory(target):
            raise AssertionError("no work may start")
    assert list(tmp_path.iterdir()) == [target]
