"""configs/speedrun_shakespeare.yaml: nanoGPT's validation characters, runs from the CLI, resumes exactly."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from scratchllm.cli import main as cli_main
from scratchllm.data import train_val_split
from scratchllm.train.config import load_train_config
from scratchllm.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "speedrun_shakespeare.yaml"


def test_recipe_trains_on_the_shared_file_and_validates_on_nanogpts_characters(shared_data):
    config = load_train_config(RECIPE)
    assert (ROOT / config.data).resolve() == (shared_data / "tinyshakespeare.txt").resolve()
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    n = len(text)  # nanoGPT's data/shakespeare_char/prepare.py: data[:int(n*0.9)], data[int(n*0.9):]
    train, val = train_val_split(text, config.train_ratio)
    assert (train, val) == (text[:int(n * 0.9)], text[int(n * 0.9):])
    assert val.startswith("?\n\nGREMIO:") and len(val) == 111_540
    assert config.tokenizer == "bpe:512" and config.model_config().vocab_size == 512


@pytest.fixture(scope="module")
def excerpt(shared_data, tmp_path_factory) -> Path:
    """The first 60,000 characters: the recipe's BPE trains in a fraction of a second."""
    path = tmp_path_factory.mktemp("shakespeare") / "excerpt.txt"
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    path.write_text(text[:60_000], encoding="utf-8")
    return path


def _trainer(excerpt: Path, out: Path, **overrides) -> Trainer:
    # The recipe with a quarter of its batch: the same tokenizer, model, optimizer and schedule.
    config = load_train_config(RECIPE, data=str(excerpt), out_dir=str(out), max_steps=4,
                               batch_size=4, micro_batch_size=4, sample_tokens=0, eval_every=2,
                               eval_batches=1, **overrides)
    return Trainer(config, stream=io.StringIO())


def test_recipe_resumes_exactly(excerpt, tmp_path):
    straight = _trainer(excerpt, tmp_path / "straight")
    straight.run()
    _trainer(excerpt, tmp_path / "split").run(stop_at=2)
    resumed = _trainer(excerpt, tmp_path / "split", resume=True)
    resumed.run()
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert resumed.state.tokens_seen == straight.state.tokens_seen == 4 * 4 * 128


def test_readme_speedrun_command_runs(shared_data, tmp_path, monkeypatch):
    """The README's `scratchllm pretrain --config configs/speedrun_shakespeare.yaml`, 2 steps."""
    monkeypatch.chdir(ROOT)  # the recipe names its data relative to the repository
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["scratchllm.cli.pretrain"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main.main(["pretrain", "--config", str(RECIPE), "--max-steps", "2",
                              "--out", str(tmp_path / "run"), "--set", "sample_tokens=4",
                              "--set", "eval_batches=1"])
    assert code == 0, err.getvalue()
    assert "done: step 2/2" in err.getvalue() and (tmp_path / "run" / "latest").is_dir()
