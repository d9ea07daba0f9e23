"""The metrics log and the loss plot (the progress line: tests/utils/test_progress.py)."""

from __future__ import annotations

import json

import pytest

from scratchllm.errors import DataError, MissingFileError
from scratchllm.train.metrics import MetricsLog, read_metrics
from scratchllm.train.plots import plot_losses, plot_run


def test_log_appends_reads_and_truncates(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        log.write({"event": "eval", "step": step, "val_loss": float("nan") if step == 2 else step / 10})
    with open(log.path, "a") as handle:
        handle.write('{"event": "eval", "step": 4, "val')  # a torn last line from a crash
    records = read_metrics(log.path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["val_loss"] is None  # NaN is not JSON
    log.truncate_after(2)
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1, 2]
    assert read_metrics(tmp_path / "absent.jsonl") == []


def _records():
    return [{"event": "eval", "step": s, "tokens_seen": s * 512, "train_loss": 10 - s, "val_loss": 10 - s / 2}
            for s in (1, 6, 11)] + [{"event": "train", "step": 5, "tokens_seen": 2560, "loss": 3.0}]


def test_plot_writes_a_png(tmp_path):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    out = plot_losses(_records(), tmp_path / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib_image.imread(out).shape
    assert (width, height) == (720, 420)  # 6x3.5 inches at 120 dpi
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed away


def test_plot_errors(tmp_path):
    with pytest.raises(DataError, match="no evaluation records"):
        plot_losses([{"event": "train", "step": 1}], tmp_path / "x.png")
    with pytest.raises(MissingFileError, match="metrics.jsonl"):
        plot_run(tmp_path)


def test_plot_run_reads_the_metrics_file(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for record in _records():
        log.write(record)
    assert plot_run(tmp_path) == tmp_path / "loss.png" and (tmp_path / "loss.png").stat().st_size > 1000


def test_plot_of_an_rl_run_points_at_its_reward_curves(tmp_path):
    """PPO/GRPO log reward records, no losses: say where their curves are, not 'wait'."""
    records = [{"event": "train", "step": 1, "tokens_seen": 64, "reward_mean": 0.2, "kl": 0.0}]
    with pytest.raises(DataError, match="reward.png"):
        plot_losses(records, tmp_path / "loss.png")
    with pytest.raises(DataError, match="first eval step"):
        plot_losses([{"event": "train", "step": 1, "train_loss": 3.0}], tmp_path / "loss.png")
