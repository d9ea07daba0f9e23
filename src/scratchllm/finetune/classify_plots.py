"""Loss and accuracy curves of a classifier fine-tuning run against examples seen (book 6.7, figures 6.16-6.17)."""

from __future__ import annotations

import os
from pathlib import Path

from scratchllm.train.metrics import METRICS_FILE, read_metrics
from scratchllm.train.plots import new_figure, save_figure

LOSS_PLOT = "loss.png"
ACCURACY_PLOT = "accuracy.png"


def plot_train_val(records: list[dict], key: str, ylabel: str,
                   out_path: str | os.PathLike) -> Path | None:
    """Plot ``train_<key>`` and ``val_<key>`` of the records that have them; None if none do."""
    rows = [r for r in records if f"train_{key}" in r or f"val_{key}" in r]
    if not rows:
        return None
    fig = new_figure(figsize=(5, 3))
    ax = fig.add_subplot()
    for split, style in (("train", "-"), ("val", "-.")):
        points = [(r["examples_seen"], r[f"{split}_{key}"]) for r in rows
                  if r.get(f"{split}_{key}") is not None]
        if points:
            ax.plot(*zip(*points), style, marker="o", markersize=3,
                    label=f"{'Training' if split == 'train' else 'Validation'} {key}")
    ax.set_xlabel("Examples seen")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, out_path, dpi=110)


def plot_classifier_run(run_dir: str | os.PathLike) -> list[Path]:
    """Write ``loss.png`` and ``accuracy.png`` from ``run_dir/metrics.jsonl``."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / METRICS_FILE)
    written = [plot_train_val(records, "loss", "Loss", run_dir / LOSS_PLOT),
               plot_train_val(records, "accuracy", "Accuracy", run_dir / ACCURACY_PLOT)]
    return [p for p in written if p is not None]
