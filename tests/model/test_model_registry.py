"""The model family registry that lets model directories hold any architecture."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.registry import (build_model, config_from_dict, family_names, family_of,
                                       get_family, register_family)
from scratchllm.weights.model_dir import load_model_dir, save_model_dir


def test_gpt_family():
    assert "gpt" in family_names()
    assert family_of(GPTModel(GPTConfig.preset("tiny"))) == "gpt"
    config = config_from_dict("gpt", GPTConfig.preset("tiny").to_dict())
    assert config == GPTConfig.preset("tiny")
    assert isinstance(build_model("gpt", config), GPTModel)


def test_unknown_family_and_model_are_clear_errors():
    with pytest.raises(CheckpointError, match=r"unknown model family 'mamba'.*gpt"):
        get_family("mamba")
    with pytest.raises(ConfigError, match="Linear is not a registered"):
        family_of(nn.Linear(2, 2))


@dataclasses.dataclass
class ToyConfig:
    vocab_size: int = 11
    width: int = 4

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        return cls(**values)


class ToyModel(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.width)
        self.register_buffer("table", torch.arange(3.0), persistent=False)  # rebuilt, not saved


def test_a_registered_family_round_trips_through_model_dirs(tmp_path):
    register_family("toy", ToyConfig, ToyModel)
    model = ToyModel(ToyConfig())
    save_model_dir(tmp_path / "toy", model)
    loaded, _ = load_model_dir(tmp_path / "toy")
    assert isinstance(loaded, ToyModel) and family_of(loaded) == "toy"
    assert torch.equal(loaded.emb.weight, model.emb.weight)
    assert torch.equal(loaded.table, torch.arange(3.0))  # non-persistent buffers stay real
