"""The pretraining loop: reproducible, resumable bit for bit, interruptible, and it learns."""

from __future__ import annotations

import io
import json
import math
import signal
from pathlib import Path

import pytest
import torch

from scratchllm.errors import ConfigError, DataError, MissingFileError
from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import Trainer
from scratchllm.train.state import latest_checkpoint, read_trainer_record

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL_MODEL = {"emb_dim": 32, "n_layers": 2, "n_heads": 2, "drop_rate": 0.1}


def _config(tmp_path, name: str = "run", **overrides) -> TrainConfig:
    values = dict(preset="tiny", model=SMALL_MODEL, context_length=16, max_steps=6,
                  micro_batch_size=2, batch_size=4, lr=3e-3, warmup_steps=2, log_every=2,
                  eval_every=3, eval_batches=2, sample_tokens=0, device="cpu", precision="fp32",
                  seed=7, out_dir=str(tmp_path / name))
    values.update(overrides)
    return TrainConfig(**values)


def _run(config: TrainConfig, **kwargs):
    trainer = Trainer(config, stream=io.StringIO())
    result = trainer.run(**kwargs)
    return trainer, result


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted 6-step run that the reproducibility and resume tests compare with."""
    return _run(_config(tmp_path_factory.mktemp("straight")))


def test_seeded_runs_are_reproducible(tmp_path, straight):
    a, result = straight
    b, _ = _run(_config(tmp_path, "b"))
    _assert_same_weights(a.model, b.model)
    # The seed decides the initial weights (same seed: same model, as in the book).
    init7 = Trainer(_config(tmp_path, "c")).model
    init8 = Trainer(_config(tmp_path, "d", seed=8)).model
    assert torch.equal(init7.out_head.weight, Trainer(_config(tmp_path, "e")).model.out_head.weight)
    assert not torch.equal(init7.out_head.weight, init8.out_head.weight)
    assert result.step == 6 and result.tokens_seen == 6 * 4 * 16 and not result.interrupted


def test_resume_equals_an_uninterrupted_run_bitwise(tmp_path, straight):
    straight, straight_result = straight
    first, first_result = _run(_config(tmp_path, "split"), stop_at=3)
    assert first_result.step == 3 and first_result.checkpoint.name == "step-00000003"
    resumed, resumed_result = _run(_config(tmp_path, "split", resume=True))
    _assert_same_weights(straight.model, resumed.model)
    assert resumed_result.tokens_seen == straight_result.tokens_seen
    assert resumed_result.val_loss == straight_result.val_loss
    for group_a, group_b in zip(straight.optimizer.state_dict()["state"].values(),
                                resumed.optimizer.state_dict()["state"].values()):
        assert all(torch.equal(group_a[k], group_b[k]) for k in group_a)
    # The metrics log reads as if the run had never stopped.
    strip = lambda path: [{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_sec")}
                          for r in map(json.loads, path.read_text().splitlines())]
    assert strip(tmp_path / "split" / "metrics.jsonl") == strip(straight.run_dir / "metrics.jsonl")


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path, monkeypatch, straight):
    straight, _ = straight
    calls = []
    original = Trainer.train_step

    def interrupted_step(self):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C mid-step
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background
    _, result = _run(_config(tmp_path, "cut"))
    monkeypatch.undo()
    assert result.interrupted and result.step == 2
    assert latest_checkpoint(tmp_path / "cut").name == "step-00000002"
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    resumed, result = _run(_config(tmp_path, "cut", resume=True))
    assert result.step == 6 and not result.interrupted
    _assert_same_weights(straight.model, resumed.model)


def test_checkpoints_run_dir_and_files(tmp_path):
    trainer, result = _run(_config(tmp_path, save_every=2, keep_last=2))
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    for name in ("metrics.jsonl", "loss.png", "train_config.json", "latest/config.json", "best/config.json"):
        assert (run / name).is_file(), name
    record = read_trainer_record(result.checkpoint)
    assert record["train_config"]["seed"] == 7 and record["state"]["data_state"]["kind"] == "windows"
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert [r["step"] for r in evals] == [1, 4, 6]  # book style: after step 1, then every 3
    assert all(r["perplexity"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-12) for r in evals)


def test_refuses_to_mix_runs_and_overwrite_starts_over(tmp_path):
    _run(_config(tmp_path, max_steps=2))
    with pytest.raises(ConfigError, match="--resume"):
        _run(_config(tmp_path, max_steps=2))
    _, result = _run(_config(tmp_path, max_steps=1, overwrite=True))
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000001"]


def test_a_run_with_no_checkpoint_left_is_not_told_to_resume(tmp_path):
    """Killed during its first save: --resume would only be refused next, so only
    --overwrite (or another folder) is offered."""
    import shutil

    _run(_config(tmp_path, max_steps=1))
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    (tmp_path / "run" / "LATEST").unlink(missing_ok=True)
    with pytest.raises(ConfigError) as refused:
        _run(_config(tmp_path, max_steps=1))
    assert "--overwrite" in str(refused.value) and "--resume" not in str(refused.value)


def test_it_learns(tmp_path):
    """A dozen steps on the book's short story take the loss from ln(50257) = 10.8 below 8.5."""
    _, result = _run(_config(tmp_path, max_steps=12, eval_every=100, lr=3e-2, warmup_steps=2,
                             batch_size=2, model={**SMALL_MODEL, "drop_rate": 0.0}))
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["train_loss"] > 10.5
    assert result.train_loss < 8.5 and result.val_loss < 9.5


def test_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(MissingFileError, match="nope.txt"):
        Trainer(_config(tmp_path, data=str(tmp_path / "nope.txt")))


def test_too_little_data_for_the_batch(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("Every effort moves you. " * 30)  # 150 tokens: 4 training windows of 16
    with pytest.raises(DataError, match="needs 2 micro batches but an epoch has only 1"):
        Trainer(_config(tmp_path, data=str(text), micro_batch_size=4, batch_size=8, train_ratio=0.5))


def test_prepared_token_folder(tmp_path, shared_data):
    from scratchllm.data import prepare_corpus

    docs = tmp_path / "docs"
    docs.mkdir()
    text = (shared_data / "tinyshakespeare.txt").read_text()[:60_000]
    for i in range(10):
        (docs / f"part{i}.txt").write_text(text[i * 6000:(i + 1) * 6000])
    prepare_corpus([docs], tmp_path / "tokens", workers=1, val_fraction=0.2, seed=0)
    trainer, result = _run(_config(tmp_path, data=str(tmp_path / "tokens"), max_steps=3))
    assert result.step == 3 and 9.0 < result.val_loss < 11.5
    assert read_trainer_record(result.checkpoint)["state"]["data_state"]["kind"] == "shard"
    # Resuming a token-file run also continues exactly.
    _run(_config(tmp_path, "split", data=str(tmp_path / "tokens"), max_steps=3), stop_at=1)
    resumed, _ = _run(_config(tmp_path, "split", data=str(tmp_path / "tokens"), max_steps=3, resume=True))
    _assert_same_weights(trainer.model, resumed.model)


@pytest.mark.slow
def test_book_ch5_config_reproduces_the_books_initial_validation_loss(tmp_path):
    """Book 5.1.3 prints 10.98110580444336 for the untrained 124M model (seed 123) on The
    Verdict's last 10%: same split, tokens, windows, initial weights and loss averaging here."""
    from scratchllm.train import steps
    from scratchllm.train.config import load_train_config

    config = load_train_config(CONFIGS / "book_ch5.yaml", out_dir=str(tmp_path / "book"), device="cpu")
    trainer = Trainer(config, stream=io.StringIO())
    val_loss = steps.estimate_loss(trainer.model, trainer.val_batches.first_batches(None),
                                   device=trainer.device)
    assert val_loss == pytest.approx(10.98110580444336, abs=1e-5)


def test_bf16_autocast_run_on_cpu(tmp_path):
    trainer, result = _run(_config(tmp_path, precision="bf16", max_steps=2, eval_every=1))
    assert trainer.precision == "bf16" and trainer.scaler is None
    assert trainer.model.out_head.weight.dtype == torch.float32  # weights stay fp32
    assert 9.0 < result.val_loss < 11.5


def test_sampling_during_training_does_not_change_it(tmp_path, straight):
    trainer = Trainer(_config(tmp_path, sample_every=3, sample_tokens=4), stream=io.StringIO())
    result = trainer.run()
    log = trainer.stream.getvalue()
    assert log.count("sample @ step") == 2 and "sample @ step 3: 'Every effort moves you" in log
    assert len(result.samples) == 1 and result.samples[0].startswith("Every effort moves you")
    _assert_same_weights(straight[0].model, trainer.model)
