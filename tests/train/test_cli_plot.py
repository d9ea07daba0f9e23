"""``scratchllm plot`` on every kind of run the README shows, and on the metrics file itself."""

from __future__ import annotations

import json
import shutil

import pytest

from scratchllm.cli import main as cli_main
from scratchllm.finetune.classify_plots import plot_classifier_run
from scratchllm.finetune.reward_task import plot_reward_run

PRETRAIN = [{"event": "eval", "step": s, "tokens_seen": 64 * s, "train_loss": 5.0 / s,
             "val_loss": 5.5 / s} for s in (1, 2, 3)]
# the records `finetune classify` writes: loss per eval step, accuracy per epoch
CLASSIFY = [*({"event": "eval", "step": s, "epoch": 1, "tokens_seen": 400 * s,
               "examples_seen": 8 * s, "train_loss": 0.8 / s, "val_loss": 0.9 / s}
              for s in (1, 2, 3)),
            {"event": "epoch", "step": 3, "epoch": 1, "tokens_seen": 1200, "examples_seen": 24,
             "train_accuracy": 0.55, "val_accuracy": 0.5}]
# the records `finetune reward` writes: loss, pairwise accuracy and margin per eval step
REWARD = [{"event": "eval", "step": s, "epoch": 1, "tokens_seen": 850 * s,
           "examples_seen": 8 * s, "train_loss": 0.69 / s, "train_accuracy": 0.5 + s / 10,
           "train_margin": 0.01 * s, "val_loss": 0.7 / s, "val_accuracy": 0.4 + s / 10,
           "val_margin": 0.005 * s} for s in (1, 2, 3)]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def write_run(path, records):
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_plot_takes_the_metrics_file_the_readme_names(tmp_path, capsys):
    """README: "Watch it learn: runs/mine/metrics.jsonl and runs/mine/loss.png"; naming the
    file plots its run, where it used to look for metrics.jsonl/metrics.jsonl."""
    run = write_run(tmp_path / "run", PRETRAIN)
    assert cli_main.main(["plot", str(run / "metrics.jsonl")]) == 0
    assert capsys.readouterr().out.strip() == str(run / "loss.png")
    assert png_size(run / "loss.png")[0] > 0


@pytest.mark.parametrize("records,own_plot", [(CLASSIFY, plot_classifier_run),
                                              (REWARD, plot_reward_run)],
                         ids=["classify", "reward"])
def test_plot_redraws_a_finetune_runs_own_figures(tmp_path, capsys, records, own_plot):
    """A classifier or reward-model run draws loss.png and accuracy.png against examples
    seen; `plot` redraws those, not pretraining's tokens-seen loss figure over its loss.png."""
    run = write_run(tmp_path / "run", records)
    reference = write_run(tmp_path / "reference", records)
    drawn = own_plot(reference)
    assert {p.name for p in drawn} == {"loss.png", "accuracy.png"}
    assert cli_main.main(["plot", str(run)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run / "loss.png"), str(run / "accuracy.png")]
    for name in ("loss.png", "accuracy.png"):
        assert png_size(run / name) == png_size(reference / name)
    # --out: the loss figure of that kind, at that path
    assert cli_main.main(["plot", str(run), "--out", str(tmp_path / "mine.png")]) == 0
    assert png_size(tmp_path / "mine.png") == png_size(reference / "loss.png")
    shutil.rmtree(reference)


def test_pretraining_style_figure_is_not_the_classifier_one(tmp_path):
    """The sizes differ, so the test above tells the two drawings apart."""
    pretrain = write_run(tmp_path / "pre", PRETRAIN)
    assert cli_main.main(["plot", str(pretrain)]) == 0
    classify = write_run(tmp_path / "clf", CLASSIFY)
    plot_classifier_run(classify)
    assert png_size(pretrain / "loss.png") != png_size(classify / "loss.png")


def test_plot_of_a_reward_ensemble_names_a_member(tmp_path, capsys):
    """`finetune reward --ensemble K` keeps each member's log in members/member-N/."""
    run = tmp_path / "rm"
    run.mkdir()
    (run / "members").mkdir()
    member = write_run(run / "members" / "member-1", REWARD)
    assert cli_main.main(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    assert "ensemble" in err and f"scratchllm plot {member}" in err
    assert cli_main.main(["plot", str(member)]) == 0
