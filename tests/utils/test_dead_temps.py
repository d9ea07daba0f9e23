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
