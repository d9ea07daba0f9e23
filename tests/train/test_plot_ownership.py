"""``plot --out`` replaces only plots scratchllm drew: the PNG's Software text is the proof."""

from __future__ import annotations

import io
import json

import pytest

from scratchllm.errors import ConfigError
from scratchllm.train.plots import is_our_png, plot_losses, plot_run
from scratchllm.utils.atomic import AtomicWriter

RECORDS = [{"event": "eval", "step": s, "tokens_seen": 64 * s, "train_loss": 5.0 / s,
            "val_loss": 5.5 / s} for s in (1, 2, 3)]


def _matplotlib_png() -> bytes:
    """A PNG matplotlib itself writes (Software: Matplotlib ...): a user's, not ours."""
    from matplotlib.figure import Figure

    buffer = io.BytesIO()
    Figure(figsize=(1, 1)).savefig(buffer, format="png")
    return buffer.getvalue()


def test_our_plots_are_recognised_and_others_are_not(tmp_path):
    ours = plot_losses(RECORDS, tmp_path / "ours.png")
    assert is_our_png(ours)
    theirs = tmp_path / "theirs.png"
    theirs.write_bytes(_matplotlib_png())
    assert b"Matplotlib" in theirs.read_bytes()
    assert not is_our_png(theirs)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert not is_our_png(text)
    cut = tmp_path / "cut.png"
    cut.write_bytes(ours.read_bytes()[:20])  # a truncated file never reads as ours
    assert not is_our_png(cut)


def test_plot_run_refuses_a_users_png_and_keeps_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    photo = tmp_path / "photo.png"
    photo.write_bytes(_matplotlib_png())
    before = photo.read_bytes()
    with pytest.raises(ConfigError, match="not written by scratchllm"):
        plot_run(run, photo)
    assert photo.read_bytes() == before
    assert is_our_png(plot_run(run, tmp_path / "plot.png"))
    plot_run(run, tmp_path / "plot.png")  # its own plot: replaced


def test_atomic_writer_refuses_a_folder_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        AtomicWriter(tmp_path)
    with AtomicWriter(tmp_path / "new" / "deeper" / "file.bin") as writer:
        writer.write(b"x")  # missing folders are created, as atomic_directory does
    assert (tmp_path / "new" / "deeper" / "file.bin").read_bytes() == b"x"


def test_a_png_in_a_scratchllm_folder_is_ours_only_where_its_kind_writes_pngs(tmp_path):
    from scratchllm.utils.outputs import HF_EXPORT, PRETRAIN_RUN, prepare_output_dir

    run, export = tmp_path / "run", tmp_path / "export"
    prepare_output_dir(run, PRETRAIN_RUN)
    prepare_output_dir(export, HF_EXPORT)
    for folder in (run, export):
        (folder / "chart.png").write_bytes(_matplotlib_png())  # no scratchllm Software text
    assert is_our_png(run / "chart.png")  # a run's *.png: an older version's plot
    assert not is_our_png(export / "chart.png")  # exports write no PNG: the user's file
