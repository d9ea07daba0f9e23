"""Loss curves: training and validation loss against tokens seen (book 5.1.3, figure 5.12)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from scratchllm.utils.atomic import AtomicWriter
from scratchllm.errors import DataError, MissingFileError
from scratchllm.train.metrics import METRICS_FILE, read_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_FILE = "loss.png"
SOFTWARE = "scratchllm"  # the PNG's Software text: how `plot --out` knows a file is its own
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def plot_losses(records: list[dict], out_path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draw the ``eval`` records' train/val loss vs tokens seen and write a PNG atomically.

    A widening gap between the two curves is the overfitting the book discusses after
    figure 5.12. The top axis shows the optimizer step for the same points.
    """
    evals = [r for r in records if r.get("event") == "eval"]
    if not evals:
        if any("reward_mean" in r for r in records):  # PPO/GRPO log rewards, not losses
            raise DataError("this is an RL run (PPO/GRPO): it has no loss curves to plot; its "
                            "reward and KL curves are in reward.png beside metrics.jsonl")
        raise DataError("no evaluation records to plot yet; let the run reach its first eval step")
    tokens = [r["tokens_seen"] for r in evals]
    fig = new_figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    for key, label, style in (("train_loss", "Training loss", "-"),
                              ("val_loss", "Validation loss", "-.")):
        points = [(t, r.get(key)) for t, r in zip(tokens, evals) if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, marker="o", markersize=3, label=label)
    ax.set_xlabel("Tokens seen")
    ax.set_ylabel("Loss")
    ax.legend(loc="upper right", title=title, title_fontsize=8)
    ax.grid(alpha=0.3)
    steps = [r["step"] for r in evals]
    if len(set(tokens)) > 1 and tokens[-1] > tokens[0]:
        per_step = (tokens[-1] - tokens[0]) / max(1, steps[-1] - steps[0])
        top = ax.secondary_xaxis("top", functions=(lambda t: t / per_step, lambda s: s * per_step))
        top.set_xlabel("Step")
    return save_figure(fig, out_path, dpi=120)


def new_figure(figsize: tuple[float, float]) -> "Figure":
    """A Figure drawn by the Agg canvas, outside pyplot: no backend switch, no global figure list.

    ``matplotlib.use(...)`` or ``pyplot.subplots`` would change a notebook user's backend or
    keep every figure alive until closed; an object-API figure is garbage like any object.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: "Figure", out_path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Render ``fig`` to PNG in memory, then replace ``out_path`` atomically: a reader (or an
    image viewer refreshing the plot during training) never sees half a file."""
    fig.tight_layout()
    buffer = io.BytesIO()
    from scratchllm import __version__

    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": f"{SOFTWARE} {__version__}"})
    out_path = Path(out_path)
    with AtomicWriter(out_path) as writer:
        writer.write(buffer.getvalue())
    return out_path


def is_our_png(path: Path) -> bool:
    """Whether ``path`` is a PNG scratchllm drew (its Software text says so), or one that a
    scratchllm folder's kind lists as its own (``*.png`` of runs from before that text)."""
    from scratchllm.utils.outputs import foreign_entries, owner_kind

    found, patterns = owner_kind(path.parent)
    if found is not None and path.exists() and path.name not in foreign_entries(path.parent,
                                                                                 patterns):
        return True
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != _PNG_SIGNATURE:
                return False
            while header := handle.read(8):  # chunks: length, type, data, crc
                length, kind = int.from_bytes(header[:4], "big"), header[4:]
                if kind in (b"IDAT", b"IEND") or len(header) < 8:
                    return False  # text chunks written by matplotlib come before the image
                data = handle.read(length + 4)[:length]
                if kind == b"tEXt" and data.startswith(b"Software\0"):
                    return data[len(b"Software\0"):].startswith(SOFTWARE.encode())
    except OSError:
        return False
    return False


def plot_run(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """(Re)draw ``RUN_DIR/loss.png`` from ``RUN_DIR/metrics.jsonl``; an ``out_path`` that
    exists must be a plot scratchllm drew (a user's file of that name is never replaced)."""
    from scratchllm.utils.outputs import check_output_file

    if out_path is not None:
        out_path = check_output_file(out_path, is_our_png)
    run_dir, records = read_run_metrics(run_dir)
    return plot_losses(records, out_path or run_dir / PLOT_FILE, title=run_dir.name)


def read_run_metrics(run_dir: str | os.PathLike) -> tuple[Path, list[dict]]:
    """(the run's folder, its metrics records). ``RUN_DIR/metrics.jsonl`` itself is taken for
    its folder too: the README points at that file, so a user may well name it."""
    run_dir = Path(run_dir)
    if run_dir.name == METRICS_FILE and run_dir.is_file():
        run_dir = run_dir.parent
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise MissingFileError(f"{str(metrics)!r} not found; give the folder a `scratchllm pretrain` "
                               "run wrote (its --out)")
    return run_dir, read_metrics(metrics)
