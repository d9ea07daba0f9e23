"""Files and folders written atomically get the permissions a plain open()/mkdir() gives
(temp files and folders start as 0600/0700, which would hide an export from other users)."""
import os
import stat

from scratchllm.utils.atomic import atomic_directory, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_directory_and_file_modes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "export") as tmp:
            (tmp / "a.txt").write_text("x")
        atomic_write_text(tmp_path / "b.txt", "y")
        os.mkdir(tmp_path / "plain")
        assert _mode(tmp_path / "export") == _mode(tmp_path / "plain") == 0o755
    finally:
        os.umask(old)
    assert (tmp_path / "export" / "a.txt").read_text() == "x"
    assert _mode(tmp_path / "b.txt") == 0o644
