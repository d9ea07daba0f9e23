"""The trainer keeps the token embedding's gradient buffer (model.embedding) and trains the
same weights as with the stock embedding gradient; it does not where that is unsafe."""

from __future__ import annotations

import io

import pytest
import torch

from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import Trainer


def _train(tmp_path, story, tokenizer, name, **overrides) -> Trainer:
    values = dict(preset="tiny", data=str(story), tokenizer=str(tokenizer), context_length=16,
                  max_steps=4, micro_batch_size=2, batch_size=2, lr=1e-3, warmup_steps=1,
                  log_every=2, eval_every=4, eval_batches=1, sample_tokens=0, save_every=4,
                  device="cpu", precision="fp32", seed=5, out_dir=str(tmp_path / name))
    values.update(overrides)
    trainer = Trainer(TrainConfig(**values), stream=io.StringIO())
    trainer.run()
    return trainer


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr("scratchllm.train.run_files.plot_losses", lambda *args, **kwargs: None)


def test_kept_buffer_trains_the_same_weights(tmp_path, story_file, hf_tokenizer_file, monkeypatch):
    kept = _train(tmp_path, story_file, hf_tokenizer_file, "kept")
    assert kept.kept_grads == [kept.model.tok_emb]
    monkeypatch.setattr("scratchllm.train.loop.row_grad_embeddings", lambda model: [])
    stock = _train(tmp_path, story_file, hf_tokenizer_file, "stock")
    assert stock.kept_grads == []
    for (name, a), b in zip(kept.model.named_parameters(), stock.model.parameters()):
        assert torch.equal(a, b), name  # one micro batch a step: bit for bit


@pytest.mark.parametrize("overrides", [dict(compile=True), dict(model={"tie_weights": True})])
def test_not_kept_when_compiled_or_tied(tmp_path, story_file, hf_tokenizer_file, overrides,
                                        monkeypatch):
    if "compile" in overrides:  # the decision only: no need to run inductor here
        monkeypatch.setattr("scratchllm.train.loop.compile_for_training",
                            lambda model, wrapped, mode: wrapped)
    trainer = _train(tmp_path, story_file, hf_tokenizer_file, "x", max_steps=1, **overrides)
    assert trainer.kept_grads == []
