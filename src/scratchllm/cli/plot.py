"""``scratchllm plot RUN_DIR``: redraw a run's loss curves from its metrics log (book 5.1.3)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="draw RUN_DIR/loss.png from RUN_DIR/metrics.jsonl",
        description="Draw training and validation loss against tokens seen (like the book's "
        "figure 5.12) from a pretraining, instruct or DPO run's metrics.jsonl; works while the "
        "run is going. A classifier or reward-model run gets its own figures redrawn instead: "
        "loss.png and accuracy.png against examples seen (book 6.7).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="folder written by `scratchllm pretrain` or `finetune` (or its "
                   "metrics.jsonl)")
    p.add_argument("--out", help="PNG path (default RUN_DIR/loss.png)")
    p.set_defaults(func=run)


def examples_seen_plotter(records: list[dict]) -> Callable[[Path], list[Path]] | None:
    """The drawing a classifier or reward-model run makes of itself (loss and accuracy
    against examples seen), so that replotting such a run redraws its figures rather than
    replacing its loss.png with pretraining's tokens-seen one; None for other runs."""
    if any(r.get("event") == "epoch" and "train_accuracy" in r for r in records):
        from scratchllm.finetune.classify_plots import plot_classifier_run

        return plot_classifier_run
    if any(r.get("event") == "eval" and "val_margin" in r for r in records):
        from scratchllm.finetune.reward_task import plot_reward_run

        return plot_reward_run
    return None


def run(args: argparse.Namespace) -> int:
    from scratchllm.errors import DataError, MissingFileError
    from scratchllm.finetune.classify_plots import plot_train_val
    from scratchllm.train.plots import is_our_png, plot_run, read_run_metrics
    from scratchllm.utils.outputs import check_output_file

    out = check_output_file(args.out, is_our_png) if args.out is not None else None
    members = sorted(Path(args.run_dir, "members").glob("*/metrics.jsonl"))
    if members and not Path(args.run_dir, "metrics.jsonl").exists():
        raise MissingFileError(f"{args.run_dir} is a reward-model ensemble: each member has its "
                               f"own curves; plot one, e.g. `scratchllm plot "
                               f"{members[0].parent}`")
    run_dir, records = read_run_metrics(args.run_dir)
    plotter = examples_seen_plotter(records)
    if plotter is None:
        print(plot_run(run_dir, out))
        return 0
    written = ([plot_train_val(records, "loss", "Loss", out)] if out is not None
               else plotter(run_dir))
    written = [path for path in written if path is not None]
    if not written:
        raise DataError("no evaluation records to plot yet; let the run reach its first eval step")
    for path in written:
        print(path)
    return 0
