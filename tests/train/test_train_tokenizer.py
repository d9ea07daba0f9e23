"""``tokenizer: bpe:N``: a BPE trained on the run's training split, rebuilt identically on resume."""

from __future__ import annotations

import io

import pytest
import torch

from scratchllm.data import train_val_split
from scratchllm.errors import ConfigError
from scratchllm.tokenizers import BPETokenizer
from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import Trainer
from scratchllm.train.tokenizer import run_tokenizer, trained_bpe_size
from scratchllm.weights.auto import open_model


def test_bpe_sizes_are_parsed_and_bad_ones_refused():
    assert trained_bpe_size("bpe:512") == 512 and trained_bpe_size("BPE:257") == 257
    assert trained_bpe_size("gpt2") is None and trained_bpe_size("tok/bpe.json") is None
    for bad in ("bpe:256", "bpe:", "bpe:x", "bpe:-5"):
        with pytest.raises(ConfigError, match="bpe:N"):
            trained_bpe_size(bad)
    with pytest.raises(ConfigError, match="bpe:N"):
        TrainConfig(tokenizer="bpe:12")


def test_the_bpe_learns_from_the_training_split_only(tmp_path):
    # The last 10% is a word the training part never has: no merge may build it.
    text = "the cat sat on the mat. " * 90 + "zyzzyva " * 30
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    tok = run_tokenizer("bpe:300", str(path), 0.9)
    train_text, val_text = train_val_split(text, 0.9)
    assert tok.to_dict() == BPETokenizer.train(train_text, 300).to_dict()
    assert "zyzzyva" in val_text and "zyzz" not in train_text
    pieces = [tok.decode([i]) for i in tok.encode(" zyzzyva")]
    assert all("zz" not in piece and "yz" not in piece for piece in pieces)
    assert len(run_tokenizer("bpe:257", str(path), 0.9).encode(text)) == len(text)  # bytes


def _config(tmp_path, name, **overrides) -> TrainConfig:
    values = dict(data=None, tokenizer="bpe:300", preset="tiny",
                  model={"emb_dim": 32, "n_layers": 1, "n_heads": 2, "drop_rate": 0.0,
                         "vocab_size": 300},
                  context_length=16, max_steps=4, micro_batch_size=2, batch_size=2, lr=3e-3,
                  warmup_steps=1, eval_every=2, eval_batches=1, sample_tokens=0, device="cpu",
                  precision="fp32", seed=3, out_dir=str(tmp_path / name))
    values.update(overrides)
    return TrainConfig(**values)


def test_a_run_with_a_trained_bpe_resumes_exactly_and_saves_its_tokenizer(tmp_path):
    straight = Trainer(_config(tmp_path, "straight"), stream=io.StringIO())
    straight.run()
    Trainer(_config(tmp_path, "split"), stream=io.StringIO()).run(stop_at=2)
    resumed = Trainer(_config(tmp_path, "split", resume=True), stream=io.StringIO())
    resumed.run()
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    loaded = open_model(tmp_path / "split", device="cpu")
    assert loaded.tokenizer.to_dict() == straight.tokenizer.to_dict()
    assert loaded.tokenizer.vocab_size == 300
