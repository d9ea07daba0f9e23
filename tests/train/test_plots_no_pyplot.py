"""Plotting leaves a notebook's matplotlib alone: same backend, no figures left in pyplot."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_plots_keep_the_users_backend_and_leave_no_pyplot_figures(tmp_path):
    # A fresh interpreter, so the backend choice is this script's alone. "svg" stands for any
    # backend a user picked (a notebook's inline one); the old code forced "Agg" over it.
    script = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        from pathlib import Path
        from scratchllm.train.plots import plot_losses
        from scratchllm.finetune.classify_plots import plot_train_val

        out = Path({str(tmp_path)!r})
        evals = [{{"event": "eval", "step": s, "tokens_seen": 64 * s, "train_loss": 5.0 / s,
                  "val_loss": 6.0 / s}} for s in (1, 2, 3)]
        plot_losses(evals, out / "loss.png")
        rows = [{{"examples_seen": 8 * s, "train_accuracy": 0.2 * s, "val_accuracy": 0.1 * s}}
                for s in (1, 2, 3)]
        plot_train_val(rows, "accuracy", "Accuracy", out / "acc.png")
        print(matplotlib.get_backend(), plt.get_fignums(), sep="|")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "svg|[]"
    for name in ("loss.png", "acc.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
