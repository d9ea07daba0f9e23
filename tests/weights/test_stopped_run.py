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


def test_a_lora_checkpoint_says_what_it_is(tmp_path):
    """A LoRA run's checkpoint (or a run killed in its first save, which has only that) is
    refused with what it is and what to open instead, not as a file with missing tensors
    ("the file is incomplete": it is not)."""
    from scratchllm.errors import CheckpointError
    from scratchllm.model.lora import apply_lora
    from scratchllm.utils.atomic import atomic_write_text
    from scratchllm.weights.model_dir import write_model_files

    model = GPTModel(GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=2,
                               n_layers=1, drop_rate=0.0, qkv_bias=False))
    apply_lora(model, rank=2, alpha=4.0)
    run = tmp_path / "run"
    step = run / "checkpoints" / "step-00000001"
    step.mkdir(parents=True)
    write_model_files(step, model)  # as save_checkpoint writes a LoRA run's weights
    (step / "trainer_state").mkdir()
    (step / "trainer_state" / "state.json").write_text("{}")
    atomic_write_text(run / "LATEST", "step-00000001\n")
    for path in (step, run):
        with pytest.raises(CheckpointError, match="LoRA run's checkpoint") as caught:
            open_model(path)
        assert "latest/" in str(caught.value) and "incomplete" not in str(caught.value)
