"""A config.json far larger than its weights is refused before the model allocates anything."""

from __future__ import annotations

import json
import resource

import pytest

from scratchllm.errors import CheckpointError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import SimpleTokenizer
from scratchllm.weights.auto import open_model
from scratchllm.weights.model_dir import save_model_dir


def test_a_damaged_width_is_named_before_tens_of_gb_are_asked_for(tmp_path):
    tokenizer = SimpleTokenizer.from_text("the cat sat on the mat")
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size))
    directory = save_model_dir(tmp_path / "m", model, tokenizer)
    header = json.loads((directory / "config.json").read_text())
    header["config"]["emb_dim"] = 39_748  # a (4E, E) layer alone would be 25 GB of fp32
    (directory / "config.json").write_text(json.dumps(header))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="config.json describes a model of") as err:
        open_model(directory)
    assert "model.safetensors" in str(err.value)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500


def test_a_matching_config_still_loads(tmp_path):
    tokenizer = SimpleTokenizer.from_text("the cat sat on the mat")
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, tie_weights=True))
    directory = save_model_dir(tmp_path / "m", model, tokenizer)
    assert open_model(directory).model.config.emb_dim == model.config.emb_dim
