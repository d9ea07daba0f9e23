"""loss.png during pretraining: drawn at the first evaluation, then at most every
``PLOT_EVERY_S`` seconds, at every checkpoint and at the end (never at every evaluation)."""

from __future__ import annotations

import io

import pytest

from scratchllm.train import run_files
from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import Trainer


@pytest.fixture
def drawings(monkeypatch):
    """(step of the newest eval record, number of eval records) each time loss.png is drawn."""
    seen: list[tuple[int, int]] = []
    real = run_files.plot_losses

    def record(records, out_path, **kwargs):
        evals = [r for r in records if r.get("event") == "eval"]
        seen.append((evals[-1]["step"], len(evals)))
        return real(records, out_path, **kwargs)

    monkeypatch.setattr(run_files, "plot_losses", record)
    return seen


def run(tmp_path, story, tokenizer, **overrides):
    config = TrainConfig(**{**dict(
        preset="tiny-llama", data=str(story), tokenizer=str(tokenizer), context_length=16,
        max_steps=7, micro_batch_size=2, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1,
        eval_every=1, eval_batches=1, sample_tokens=0, save_every=3, device="cpu",
        precision="fp32", seed=5, out_dir=str(tmp_path / "run")), **overrides})
    return Trainer(config, stream=io.StringIO()).run()


def test_an_eval_every_step_draws_only_at_checkpoints_and_the_end(
        tmp_path, story_file, hf_tokenizer_file, drawings, monkeypatch):
    monkeypatch.setattr(run_files, "PLOT_EVERY_S", 1e9)  # a long run: the interval never passes
    result = run(tmp_path, story_file, hf_tokenizer_file)
    assert result.step == 7
    # the first eval, the checkpoints at 3 and 6, the end at 7; each with every eval so far
    assert drawings == [(1, 1), (3, 3), (6, 6), (7, 7)]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0


def test_with_no_interval_every_eval_draws_once(tmp_path, story_file, hf_tokenizer_file,
                                                drawings, monkeypatch):
    monkeypatch.setattr(run_files, "PLOT_EVERY_S", 0.0)
    run(tmp_path, story_file, hf_tokenizer_file, max_steps=4, eval_every=2)
    assert drawings == [(1, 1), (3, 2), (4, 3)]  # a checkpoint adds no redraw of the same data
