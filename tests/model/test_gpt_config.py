"""GPTConfig validation and presets (book 4.1)."""

from __future__ import annotations

import pytest

from scratchllm.errors import ConfigError, ScratchLLMError
from scratchllm.model import GPTConfig


def test_defaults_are_the_books_gpt_config_124m():
    cfg = GPTConfig()
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers,
            cfg.drop_rate, cfg.qkv_bias) == (50257, 1024, 768, 12, 12, 0.1, False)
    assert cfg == GPTConfig.preset("gpt2-small", drop_rate=0.1)
    assert cfg.head_dim == 64


@pytest.mark.parametrize("name, sizes", [
    ("gpt2-small", (768, 12, 12)), ("gpt2-medium", (1024, 24, 16)),
    ("gpt2-large", (1280, 36, 20)), ("gpt2-xl", (1600, 48, 25)),
])
def test_gpt2_presets_book_exercise_4_3(name, sizes):
    cfg = GPTConfig.preset(name)
    assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads) == sizes
    assert GPTConfig.preset(name.upper()) == cfg


def test_aliases_and_overrides():
    assert GPTConfig.preset("124M") == GPTConfig.preset("gpt2-small")
    assert GPTConfig.preset("tiny", context_length=16).context_length == 16


def test_round_trip_through_dict():
    cfg = GPTConfig.preset("tiny", tie_weights=True, qkv_bias=True)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg


def test_emb_dim_not_divisible_by_heads():
    with pytest.raises(ValueError, match="emb_dim.*n_heads"):
        GPTConfig(emb_dim=100, n_heads=12)


@pytest.mark.parametrize("field", ["vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True, "8"])
def test_non_positive_or_non_integer_sizes(field, value):
    with pytest.raises(ValueError, match=f"GPTConfig.{field} must be a positive integer"):
        GPTConfig(**{field: value})


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.1", None, True])
def test_bad_drop_rate(value):
    with pytest.raises(ConfigError, match="GPTConfig.drop_rate"):
        GPTConfig(drop_rate=value)


@pytest.mark.parametrize("field", ["qkv_bias", "tie_weights"])
def test_flags_must_be_booleans(field):
    with pytest.raises(ConfigError, match=f"GPTConfig.{field}"):
        GPTConfig(**{field: "yes"})


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError) as err:
        GPTConfig.preset("gpt5")
    message = str(err.value)
    assert "gpt5" in message
    for name in GPTConfig.preset_names():
        assert name in message
    assert isinstance(err.value, ScratchLLMError)


def test_unknown_keys_are_refused_with_valid_fields():
    with pytest.raises(ConfigError, match=r"\['n_embd'\].*emb_dim"):
        GPTConfig.from_dict({"n_embd": 768})
    with pytest.raises(ConfigError, match="n_embd"):
        GPTConfig.preset("tiny", n_embd=64)
