"""LlamaConfig: validation messages, presets with the published sizes, dict round trips."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ConfigError
from scratchllm.model import LlamaConfig, LlamaModel, RopeScaling


def _n_params(config: LlamaConfig) -> int:
    with torch.device("meta"):
        model = LlamaModel(config)
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


# Unique-parameter counts printed in the book's Llama 3.2 and Qwen3 notebooks.
@pytest.mark.parametrize("name, expected", [("llama3.2-1b", 1_235_814_400),
                                            ("qwen3-0.6b", 596_049_920)])
def test_presets_have_the_published_parameter_counts(name, expected):
    assert _n_params(LlamaConfig.preset(name)) == expected


def test_preset_fields_and_overrides():
    c = LlamaConfig.preset("llama3.2-1b", context_length=4096)
    assert (c.emb_dim, c.n_heads, c.n_kv_groups, c.head_dim) == (2048, 32, 8, 64)
    assert c.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    assert c.context_length == 4096 and c.tie_weights and c.dtype == "bfloat16"
    q = LlamaConfig.preset("qwen3-0.6b")
    assert q.head_dim == 128 and q.emb_dim // q.n_heads == 64  # set independently
    assert q.qk_norm and q.rope_scaling is None
    with pytest.raises(ConfigError, match="unknown preset 'llama9'.*tiny-llama"):
        LlamaConfig.preset("llama9")


@pytest.mark.parametrize("name", LlamaConfig.preset_names())
def test_dict_round_trip(name):
    config = LlamaConfig.preset(name)
    as_dict = config.to_dict()
    assert isinstance(as_dict["rope_scaling"], (dict, type(None)))
    assert LlamaConfig.from_dict(as_dict) == config


@pytest.mark.parametrize("overrides, message", [
    (dict(n_heads=6, n_kv_groups=4), "n_heads .6. must be divisible by n_kv_groups .4."),
    (dict(n_layers=0), "LlamaConfig.n_layers must be a positive integer"),
    (dict(emb_dim=64.0), "LlamaConfig.emb_dim must be a positive integer"),
    (dict(head_dim=15), "LlamaConfig.head_dim .15. must be even"),
    (dict(rope_base=-1.0), "LlamaConfig.rope_base must be a positive number"),
    (dict(qk_norm="yes"), "LlamaConfig.qk_norm must be true or false"),
    (dict(dtype="float64"), "LlamaConfig.dtype must be one of"),
    (dict(rope_scaling=dict(factor=8.0, bogus=1)), "unknown LlamaConfig.rope_scaling key"),
    (dict(rope_scaling=dict(low_freq_factor=4.0, high_freq_factor=1.0)), "high_freq_factor"),
    (dict(rope_scaling="llama3"), "LlamaConfig.rope_scaling must be None or a dict"),
])
def test_invalid_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        LlamaConfig.preset("tiny-llama", **overrides)


def test_unknown_field_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown LlamaConfig field.*'drop_rate'.*n_kv_groups"):
        LlamaConfig.from_dict({**LlamaConfig.preset("tiny-llama").to_dict(), "drop_rate": 0.1})


def test_config_errors_are_value_errors():
    with pytest.raises(ValueError):
        LlamaConfig(n_heads=0)
