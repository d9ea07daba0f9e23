"""A checkpoint save that runs out of disk space: one clear line, nothing half-written, the
previous checkpoint (and latest/, best/) still loads, and --resume continues from it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import safetensors.torch
import torch

import scratchllm
from scratchllm.cli import main as cli_main
from scratchllm.errors import CheckpointError
from scratchllm.train.run_dir import DiskFullError, is_disk_full


@pytest.fixture(autouse=True)
def _only_pretrain(monkeypatch):
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["scratchllm.cli.pretrain"])


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run / "latest" / "model.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _assert_left_intact(run: Path, err: str, kept: str) -> None:
    """One line naming the full disk and the kept checkpoint; only complete dirs remain."""
    lines = [line for line in err.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], lines
    assert lines[0].startswith("scratchllm pretrain: error: the disk is full")
    assert f"checkpoints/{kept} is intact" in lines[0] and "--resume" in lines[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [kept]
    leftovers = [p for p in run.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []
    assert (run / "LATEST").read_text().strip() == kept
    for name in (f"checkpoints/{kept}", "latest", "best"):
        model, tokenizer = scratchllm.load(run / name)
        assert tokenizer is not None and model(torch.tensor([[1, 2, 3]])).isfinite().all()
    assert json.loads((run / "latest" / "config.json").read_text())["metadata"]["checkpoint"] \
        == f"checkpoints/{kept}"


def test_disk_full_while_writing_weights(tmp_path, llama_args, monkeypatch, capsys):
    """Portable: the safetensors write of the second checkpoint stops half-way with ENOSPC."""
    straight = tmp_path / "straight"
    assert cli_main.main(llama_args(straight)) == 0
    real_save = safetensors.torch.save_file

    def fills_the_disk(tensors, filename, metadata=None):
        if "step-00000006" not in str(filename):
            return real_save(tensors, filename, metadata=metadata)
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    run = tmp_path / "run"
    monkeypatch.setattr(safetensors.torch, "save_file", fills_the_disk)
    capsys.readouterr()
    assert cli_main.main(llama_args(run)) == 2
    _assert_left_intact(run, capsys.readouterr().err, "step-00000003")
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert cli_main.main([*llama_args(run), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    _assert_same(_final_weights(run), _final_weights(straight))


def test_full_disk_is_recognised_through_library_wrappers():
    """safetensors (Rust) and torch.save wrap ENOSPC in their own exception types."""
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    rust = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert is_disk_full(rust)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("os error 280)"))
    assert issubclass(DiskFullError, CheckpointError)


# ----------------------------------------------------------------------------- a real full disk
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted at tmp_path/disk, resizable with ``resize(bytes)``; skipped where
    mounting is not allowed (not root, no CAP_SYS_ADMIN, no mount binary)."""
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and the mount command")
    point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    point.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([mount, *args], capture_output=True, text=True)

    done = run("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(point))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")

    def resize(size: int) -> None:
        result = run("-o", f"remount,size={size}", str(point))
        assert result.returncode == 0, result.stderr

    try:
        yield point, resize
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_real_full_disk_mid_checkpoint(tmp_path, small_disk, llama_args, capsys):
    """On a tmpfs with room for one checkpoint and a half, the second save runs out of space."""
    point, resize = small_disk
    straight = tmp_path / "straight"
    extra = ["--eval-every", "100", "--set", "keep_last=1"]  # evals at steps 1 and 6 only
    assert cli_main.main(llama_args(straight, *extra)) == 0
    ckpt = straight / "checkpoints" / "step-00000006"
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    weights_bytes = (ckpt / "model.safetensors").stat().st_size
    # Steps 1-5 hold best/ (step 1's weights) + one checkpoint; step 6 needs a second one.
    resize(int(1.5 * ckpt_bytes + weights_bytes + 256 * 1024))
    run = point / "run"
    capsys.readouterr()
    assert cli_main.main(llama_args(run, *extra)) == 2
    _assert_left_intact(run, capsys.readouterr().err, "step-00000003")
    resize(64 * 1024 * 1024)
    assert cli_main.main([*llama_args(run, *extra), "--resume"]) == 0
    _assert_same(_final_weights(run), _final_weights(straight))


@pytest.mark.parametrize("fails", ["pointer", "latest", "best"])
def test_disk_full_after_the_checkpoint_dir_is_in_place(tmp_path, monkeypatch, fails):
    """Full while pointing LATEST/latest/ at the new checkpoint: it is dropped again and they
    point back at the previous one. Full while linking best/: the new checkpoint stands and
    best/ keeps the previous best. Either way the message names what --resume will use."""
    from scratchllm.model import GPTConfig, GPTModel
    from scratchllm.train import state as state_module
    from scratchllm.train.state import TrainingState, latest_checkpoint, save_checkpoint

    model = GPTModel(GPTConfig.from_dict(dict(vocab_size=50, context_length=8, emb_dim=16,
                                              n_heads=2, n_layers=1)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    run = tmp_path / "run"

    def save(step: int) -> Path:
        state = TrainingState(step=step, tokens_seen=step, epoch=0)
        return save_checkpoint(run, model=model, optimizer=optimizer, scheduler=None,
                               state=state, val_loss=5.0 - step)

    first = save(1)
    weights = {1: {k: v.clone() for k, v in model.state_dict().items()}}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    weights[2] = {k: v.clone() for k, v in model.state_dict().items()}
    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if fails == "pointer":
        def write_pointer(run_dir, name):
            raise no_space
        monkeypatch.setattr(state_module, "write_pointer", write_pointer)
    else:
        real_link = state_module.link_model_dir

        def link_model_dir(source, target):
            if target.name == fails:
                raise no_space
            real_link(source, target)
        monkeypatch.setattr(state_module, "link_model_dir", link_model_dir)
    kept = "step-00000002" if fails == "best" else "step-00000001"
    with pytest.raises(DiskFullError, match=f"checkpoints/{kept} is intact"):
        save(2)
    monkeypatch.undo()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        ["step-00000001", "step-00000002"][: 2 if fails == "best" else 1]
    assert latest_checkpoint(run) == run / "checkpoints" / kept
    assert [p for p in run.rglob("*") if ".tmp-" in p.name or ".old-" in p.name] == []
    expected = {"latest": 2 if fails == "best" else 1, "best": 1}
    for name, step in expected.items():
        loaded = scratchllm.load(run / name)[0].state_dict()
        assert all(torch.equal(loaded[k], weights[step][k]) for k in loaded), name
    assert first.is_dir()
