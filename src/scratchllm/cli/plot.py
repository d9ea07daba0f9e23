"""``scratchllm plot RUN_DIR``: redraw a run's loss curves from its metrics log (book 5.1.3)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="draw RUN_DIR/loss.png from RUN_DIR/metrics.jsonl",
        description="Draw training and validation loss against tokens seen (like the book's "
        "figure 5.12) from a pretraining run's metrics.jsonl; works while the run is going.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `scratchllm pretrain`")
    p.add_argument("--out", help="PNG path (default RUN_DIR/loss.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.train.plots import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0
