"""Resumable checkpoints: exact resume, RNG restore, keep-last-K, best/, crashes, bad files."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from scratchllm.errors import CheckpointError, ConfigError, MissingFileError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.weights import model_dir as checkpoint
from scratchllm.weights.model_dir import load_model_dir
from scratchllm.train.state import (TrainingState, latest_checkpoint, load_checkpoint,
                                    load_train_config, save_checkpoint)

CONFIG = dict(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.2)


class Run:
    """A tiny model + AdamW + warmup schedule, trained on random batches from the global RNG,
    so a resume matches an uninterrupted run only if weights, optimizer, scheduler AND the
    RNG states (batches, dropout) all come back."""

    def __init__(self, **overrides):
        self.model = GPTModel(GPTConfig.from_dict({**CONFIG, **overrides}))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2, weight_decay=0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / 4))
        self.state = TrainingState(step=0, tokens_seen=0, epoch=0, data_state={"offset": 0},
                                   best_val_loss=None)

    def train(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            ids = torch.randint(0, CONFIG["vocab_size"], (2, 9))
            logits = self.model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.state.step += 1
            self.state.tokens_seen += 16
            self.state.data_state = {"offset": self.state.step * 16}

    def save(self, run_dir: Path, **kwargs) -> Path:
        return save_checkpoint(run_dir, model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler, state=self.state, **kwargs)

    def load(self, path: Path) -> TrainingState:
        self.state = load_checkpoint(path, model=self.model, optimizer=self.optimizer,
                                     scheduler=self.scheduler)
        return self.state


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def draws() -> tuple:
    return torch.rand(4).tolist(), random.random(), float(np.random.rand())


# ----------------------------------------------------------------------------- resume
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    torch.manual_seed(1)
    straight = Run()
    straight.train(6)

    torch.manual_seed(1)
    first = Run()
    first.train(3)
    first.save(tmp_path / "run", train_config={"lr": 1e-2, "out": "runs/x"})
    first.train(2)  # wander off: different weights, optimizer moments and RNG position

    torch.manual_seed(99)
    resumed = Run()
    state = resumed.load(tmp_path / "run")
    assert state == TrainingState(step=3, tokens_seen=48, epoch=0, data_state={"offset": 48},
                                  best_val_loss=None)
    assert resumed.scheduler.last_epoch == 3
    resumed.train(3)
    assert same_weights(weights(resumed.model), weights(straight.model))
    assert resumed.state.step == straight.state.step == 6
    assert load_train_config(tmp_path / "run") == {"lr": 1e-2, "out": "runs/x"}


def test_rng_states_are_restored(tmp_path):
    run = Run()
    random.seed(5)
    np.random.seed(5)
    run.save(tmp_path / "run")
    expected = draws()
    random.seed(6)
    np.random.seed(6)
    torch.manual_seed(6)
    run.load(tmp_path / "run")
    assert draws() == expected


def test_optimizer_state_and_tensor_data_state_round_trip(tmp_path):
    run = Run()
    run.train(2)
    generator = torch.Generator().manual_seed(3)
    run.state.data_state = {"generator": generator.get_state(), "epoch_order": [2, 0, 1]}
    ckpt = run.save(tmp_path / "run")
    moments = [s["exp_avg"].clone() for s in run.optimizer.state.values()]
    other = Run()
    state = other.load(ckpt)
    restored = [s["exp_avg"] for s in other.optimizer.state.values()]
    assert len(restored) == len(moments) > 0
    assert all(torch.equal(a, b) for a, b in zip(moments, restored))
    assert torch.equal(state.data_state["generator"], generator.get_state())
    assert state.data_state["epoch_order"] == [2, 0, 1]


def test_config_mismatch_names_the_fields(tmp_path):
    Run().save(tmp_path / "run")
    with pytest.raises(CheckpointError) as info:
        Run(emb_dim=32, n_layers=2).load(tmp_path / "run")
    message = str(info.value)
    assert "emb_dim: checkpoint 16 vs model 32" in message and "n_layers" in message
    assert "config.json" in message and "vocab_size" not in message


def test_optimizer_that_does_not_fit_is_refused(tmp_path):
    run = Run()
    run.train(1)
    run.save(tmp_path / "run")
    other = Run()
    other.optimizer = torch.optim.AdamW(list(other.model.parameters())[:3])
    with pytest.raises(CheckpointError, match="optimizer.pt"):
        other.load(tmp_path / "run")


class _Payload:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return {}


def test_pickled_objects_in_trainer_state_are_refused(tmp_path):
    ckpt = Run().save(tmp_path / "run")
    torch.save({"state": {}, "param_groups": [], "x": _Payload()},
               ckpt / "trainer_state" / "optimizer.pt")
    with pytest.raises(CheckpointError, match="optimizer.pt"):
        Run().load(ckpt)
    assert not _Payload.ran


def test_damaged_checkpoint_files_name_the_file(tmp_path):
    ckpt = Run().save(tmp_path / "run")
    weights_file = ckpt / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Run().load(ckpt)
    ckpt = Run().save(tmp_path / "run2")
    (ckpt / "trainer_state" / "rng.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="rng.pt"):
        Run().load(ckpt)
    (ckpt / "trainer_state" / "state.json").write_text('{"state": {"epoch": 0}}')
    with pytest.raises(CheckpointError, match=r"state.json is incomplete.*step"):
        Run().load(ckpt)
    (ckpt / "trainer_state" / "state.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="state.json"):
        Run().load(ckpt)
    with pytest.raises(MissingFileError, match="no checkpoint"):
        Run().load(tmp_path / "empty")


# ----------------------------------------------------------------------------- run directory
def test_keep_last_latest_and_best(tmp_path):
    run_dir = tmp_path / "run"
    run = Run()
    snapshots = {}
    for loss in [3.0, 2.0, 2.5, 1.0, float("nan"), 1.5]:
        run.train(1)
        snapshots[run.state.step] = weights(run.model)
        run.save(run_dir, val_loss=loss, keep_last=2)
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert steps == ["step-00000005", "step-00000006"]
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000006"
    assert (run_dir / "LATEST").read_text().strip() == "step-00000006"
    # best/ still holds step 4 although its checkpoint was pruned (hard links keep the data).
    best, _ = load_model_dir(run_dir / "best")
    assert same_weights(best.state_dict(), snapshots[4])
    assert json.loads((run_dir / "best" / "config.json").read_text())["metadata"]["step"] == 4
    for path in (run_dir, run_dir / "latest"):  # what `scratchllm generate --model` loads
        latest, _ = load_model_dir(path)
        assert same_weights(latest.state_dict(), snapshots[6])
    assert Run().load(run_dir).best_val_loss == 1.0


def test_keep_last_validation_and_bad_train_config(tmp_path):
    with pytest.raises(ConfigError, match="keep_last"):
        Run().save(tmp_path / "run", keep_last=0)
    with pytest.raises(ConfigError, match="JSON"):
        Run().save(tmp_path / "run", train_config={"out": Path("runs")})
    assert latest_checkpoint(tmp_path / "run") is None


def test_latest_checkpoint_skips_junk_and_dangling_pointer(tmp_path):
    run_dir = tmp_path / "run"
    run = Run()
    run.state.step = 2
    run.save(run_dir)
    root = run_dir / "checkpoints"
    (root / ".step-00000009.tmp-abc").mkdir()  # a save killed with SIGKILL
    (root / "step-00000007").mkdir()  # half-deleted / incomplete
    (root / "step-00000007" / "config.json").write_text("{}")
    (run_dir / "LATEST").write_text("step-00000042\n")  # points at nothing
    assert latest_checkpoint(run_dir) == root / "step-00000002"
    run.state.step = 3
    run.save(run_dir)
    assert not (root / ".step-00000009.tmp-abc").exists()  # stale temp dirs are cleaned up


def _half_writer_then_crash(real):
    def writer(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("killed mid-save")
    return writer


@pytest.mark.parametrize("crash", ["safetensors", "rename"])
def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch, crash):
    run_dir = tmp_path / "run"
    run = Run()
    run.train(1)
    first = weights(run.model)
    run.save(run_dir, val_loss=2.0)
    run.train(1)
    if crash == "safetensors":
        monkeypatch.setattr(safetensors.torch, "save_file",
                            _half_writer_then_crash(safetensors.torch.save_file))
        expected_error = KeyboardInterrupt
    else:
        real_replace = checkpoint.os.replace

        def replace(src, dst):
            if Path(dst).name == "step-00000002":
                raise OSError("disk full")
            real_replace(src, dst)

        monkeypatch.setattr(checkpoint.os, "replace", replace)
        expected_error = OSError
    with pytest.raises(expected_error):
        run.save(run_dir, val_loss=1.0)
    monkeypatch.undo()

    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000001"]
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000001"
    restored = Run()
    assert restored.load(run_dir).step == 1
    assert same_weights(weights(restored.model), first)
    for name in ("latest", "best"):
        assert same_weights(load_model_dir(run_dir / name)[0].state_dict(), first)


def test_run_dir_without_latest_falls_back_to_newest_checkpoint(tmp_path):
    run = Run()
    run.train(1)
    run.save(tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "latest")  # e.g. a crash between the two renames
    loaded, _ = load_model_dir(tmp_path / "run")
    assert same_weights(loaded.state_dict(), weights(run.model))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_saves_and_resumes_on_cuda(tmp_path):
    run = Run()
    run.model.cuda()
    run.optimizer = torch.optim.AdamW(run.model.parameters(), lr=1e-2)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda step: 1.0)
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 8), device="cuda")
    run.model(ids).sum().backward()
    run.optimizer.step()
    ckpt = run.save(tmp_path / "run")
    after_save = torch.rand(3, device="cuda")
    other = Run()
    other.model.cuda()
    other.optimizer = torch.optim.AdamW(other.model.parameters(), lr=1e-2)
    other.scheduler = torch.optim.lr_scheduler.LambdaLR(other.optimizer, lambda step: 1.0)
    other.load(ckpt)
    assert torch.equal(torch.rand(3, device="cuda"), after_save)
    assert same_weights(weights(other.model), weights(run.model))
    assert all(s["exp_avg"].is_cuda for s in other.optimizer.state.values())
    loaded, _ = load_model_dir(ckpt, device="cuda")
    assert loaded.tok_emb.weight.is_cuda
