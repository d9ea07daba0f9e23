"""A run stopped before its first checkpoint (killed, or out of disk) has only best/: opening
the run says where its last good model is, instead of "not a model directory"."""

from __future__ import annotations

import pytest

from scratchllm.errors import MissingFileError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.weights.auto import open_model
from scratchllm.weights.model_dir import save_model_dir


def test_a_run_with_only_best_points_at_it(tmp_path):
    run = tmp_path / "run"
    model = GPTModel(GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=2,
                               n_layers=1, drop_rate=0.0, qkv_bias=False))
    save_model_dir(run / "best", model, tokenizer=None)
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(MissingFileError, match="before its first checkpoint") as caught:
        open_model(run)
    assert str(run / "best") in str(caught.value)
    best = open_model(run / "best")  # the folder it names opens
    assert sum(p.numel() for p in best.model.parameters()) == \
        sum(p.numel() for p in model.parameters())
