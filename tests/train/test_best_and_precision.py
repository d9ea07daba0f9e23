"""best/ holds the lowest validation loss ever measured (also between checkpoints, also across a
resume), and bf16 presets train fp32 master weights under autocast."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

import scratchllm
from scratchllm.model.llama_config import LlamaConfig
from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import Trainer
from scratchllm.train.state import read_trainer_record
from scratchllm.train.steps import master_weights_config

# The validation loss each step's evaluation "measures": the lowest (1.0) is at step 3, which
# is no checkpoint step (save_every=4), and steps 5-6 after a resume do not beat it.
SCRIPTED_VAL = {1: 3.0, 2: 2.0, 3: 1.0, 4: 1.5, 5: 1.2, 6: 1.4}


def _config(tmp_path: Path, name: str, story: Path, tokenizer: Path, **overrides) -> TrainConfig:
    values = dict(preset="tiny-llama", data=str(story), tokenizer=str(tokenizer),
                  context_length=16, max_steps=6, micro_batch_size=2, batch_size=2, lr=1e-3,
                  warmup_steps=1, log_every=1, eval_every=1, eval_batches=1, sample_tokens=0,
                  save_every=4, device="cpu", precision="fp32", seed=5,
                  out_dir=str(tmp_path / name))
    values.update(overrides)
    return TrainConfig(**values)


def _run(config: TrainConfig, **kwargs):
    trainer = Trainer(config, stream=io.StringIO())
    return trainer, trainer.run(**kwargs)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.arange(12).reshape(2, 6))


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    """An eval every step would redraw loss.png every step; that is not what is tested here."""
    monkeypatch.setattr("scratchllm.train.run_files.plot_losses", lambda *args, **kwargs: None)


@pytest.fixture
def scripted_evals(monkeypatch):
    monkeypatch.setattr(Trainer, "evaluate", lambda self: (9.0, SCRIPTED_VAL[self.state.step]))


def test_best_is_the_lowest_eval_even_between_checkpoints_and_across_resume(
        tmp_path, story_file, hf_tokenizer_file, scripted_evals):
    make = lambda name, **kw: _config(tmp_path, name, story_file, hf_tokenizer_file, **kw)
    _run(make("at3", max_steps=6), stop_at=3)  # the weights after step 3, for comparison
    expected = _logits(scratchllm.load(tmp_path / "at3" / "latest")[0])

    _run(make("split"), stop_at=4)  # checkpoint at 4; best/ was written at step 3
    _run(make("split", resume=True))
    _run(make("straight"))
    for name in ("split", "straight"):
        run = tmp_path / name
        best, tokenizer = scratchllm.load(run / "best")
        assert torch.equal(_logits(best), expected), name
        assert tokenizer is not None
        meta = json.loads((run / "best" / "config.json").read_text())["metadata"]
        assert meta["step"] == 3 and meta["val_loss"] == 1.0 and meta["tokens_seen"] == 3 * 2 * 16
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
            ["step-00000004", "step-00000006"]
        assert read_trainer_record(run / "checkpoints" / "step-00000006")["state"][
            "best_val_loss"] == 1.0
        assert not torch.equal(_logits(scratchllm.load(run / "latest")[0]), expected)


def test_best_on_a_checkpoint_step_links_that_checkpoint(tmp_path, story_file, hf_tokenizer_file,
                                                         monkeypatch):
    losses = {1: 3.0, 2: 2.0, 3: 2.5, 4: 1.0}
    monkeypatch.setattr(Trainer, "evaluate", lambda self: (9.0, losses[self.state.step]))
    _run(_config(tmp_path, "run", story_file, hf_tokenizer_file, max_steps=4))
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step-00000004"
    meta = json.loads((run / "best" / "config.json").read_text())["metadata"]
    assert meta["checkpoint"] == "checkpoints/step-00000004" and meta["val_loss"] == 1.0
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (run / "best" / name).samefile(ckpt / name)


# ----------------------------------------------------------------------------- precision
def test_master_weights_config_only_changes_the_dtype():
    preset = LlamaConfig.preset("qwen3-0.6b")
    assert preset.dtype == "bfloat16"
    trained = master_weights_config(preset)
    assert trained.dtype == "float32"
    assert {**trained.to_dict(), "dtype": None} == {**preset.to_dict(), "dtype": None}


def test_pure_bf16_adamw_loses_small_updates():
    """The failure fp32 masters prevent: a 1e-4 step from 1.0 rounds back to 1.0 in bf16."""
    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = torch.optim.AdamW([weight], lr=1e-4, weight_decay=0.0)
    for _ in range(3):
        weight.grad = torch.ones_like(weight)
        optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(4, dtype=torch.bfloat16))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bf16_preset_trains_fp32_master_weights(tmp_path, story_file, hf_tokenizer_file,
                                                precision):
    config = _config(tmp_path, "run", story_file, hf_tokenizer_file, model={"dtype": "bfloat16"},
                     max_steps=3, lr=1e-4, min_lr=1e-4, warmup_steps=0, eval_every=100,
                     save_every=0, precision=precision)
    trainer = Trainer(config, stream=io.StringIO())
    norms = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "norm" in n}
    assert norms and all(torch.equal(w, torch.ones_like(w)) for w in norms.values())
    trainer.run()
    params = dict(trainer.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    moments = [t for s in trainer.optimizer.state.values() for k, t in s.items() if k != "step"]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    # Three AdamW steps of about lr=1e-4 each moved the RMSNorm scales off 1.0, by less than
    # half of bf16's spacing below 1.0 (2**-9): bf16 weights would all still read 1.0.
    moved = torch.cat([(params[n].detach() - 1.0).abs().flatten() for n in norms])
    assert moved.max() > 0 and moved.max() < 2 ** -9
    assert all(torch.equal(params[n].detach().bfloat16(), torch.ones_like(norms[n]).bfloat16())
               for n in norms)
    latest = tmp_path / "run" / "latest"
    assert json.loads((latest / "config.json").read_text())["config"]["dtype"] == "float32"
    saved = safetensors.torch.load_file(str(latest / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in saved.values())
    assert torch.equal(saved["trf_blocks.0.norm1.weight"], params["trf_blocks.0.norm1.weight"])
