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


def test_model_directory_weights_get_the_plain_file_mode(tmp_path):
    """safetensors (>= 0.7) writes model.safetensors as 0600: a model directory saved for a
    team, a container or a web server would be unreadable to everyone but its owner."""
    from scratchllm.model import GPTConfig, GPTModel
    from scratchllm.weights.model_dir import save_model_dir

    model = GPTModel(GPTConfig.preset("tiny", vocab_size=64, context_length=8, n_layers=1))
    out = save_model_dir(tmp_path / "model", model)
    (tmp_path / "plain.txt").write_text("x")
    assert _mode(out / "model.safetensors") == _mode(tmp_path / "plain.txt")
    assert _mode(out / "config.json") == _mode(tmp_path / "plain.txt")
