"""TrainConfig: defaults, files, overrides and the errors bad input gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchllm.errors import ConfigError, MissingFileError, ScratchLLMError
from scratchllm.train.config import TrainConfig, load_train_config, read_config_file

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_the_main_job():
    cfg = TrainConfig()
    model = cfg.model_config()
    assert cfg.data is None and cfg.out_dir == "runs/verdict"
    assert (model.emb_dim, model.n_layers, model.n_heads, model.context_length) == (256, 4, 4, 128)
    assert model.vocab_size == 50257 and not model.tie_weights
    assert cfg.accum_steps == 1 and cfg.effective_min_lr == pytest.approx(2e-4)


def test_verdict_yaml_spells_out_the_defaults():
    from_file, default = load_train_config(CONFIGS / "verdict.yaml"), TrainConfig()
    assert from_file.model_config() == default.model_config()
    assert {**from_file.to_dict(), "model": {}} == default.to_dict()


def test_book_ch5_yaml_is_the_books_recipe():
    cfg = load_train_config(CONFIGS / "book_ch5.yaml")
    model = cfg.model_config()
    # GPT_CONFIG_124M with context_length 256 (book 5.1).
    assert model.to_dict() == dict(vocab_size=50257, context_length=256, emb_dim=768, n_heads=12,
                                   n_layers=12, drop_rate=0.1, qkv_bias=False, tie_weights=False)
    assert (cfg.lr, cfg.weight_decay, cfg.decay_all, cfg.epochs, cfg.batch_size) == (4e-4, 0.1, True, 10, 2)
    assert (cfg.stride, cfg.train_ratio, cfg.seed, cfg.eval_every, cfg.eval_batches) == (256, 0.9, 123, 5, 5)
    assert cfg.effective_min_lr == cfg.lr and cfg.warmup_steps == 0 and cfg.grad_clip is None
    assert cfg.betas == (0.9, 0.999)


def test_tiny_yaml_uses_gradient_accumulation():
    cfg = load_train_config(CONFIGS / "tiny.yaml")
    assert cfg.model_config().n_layers == 2 and cfg.accum_steps == 2 and cfg.max_steps == 6


def test_preset_without_overrides_is_the_preset():
    assert TrainConfig(preset="tiny").model_config().emb_dim == 64


def test_paths_become_strings(tmp_path):
    cfg = TrainConfig(data=tmp_path / "a.txt", out_dir=tmp_path)
    assert cfg.data == str(tmp_path / "a.txt") and cfg.out_dir == str(tmp_path)


def test_toml_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lr = 3e-4\nepochs = 2\n[model]\nn_layers = 2\n')
    cfg = load_train_config(path, epochs=5, seed=None)
    assert cfg.lr == 3e-4 and cfg.epochs == 5 and cfg.seed == 123
    assert cfg.model_config().n_layers == 2


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"learning_rate.*valid keys are: .*lr"):
        load_train_config(path)


@pytest.mark.parametrize("field,value", [
    ("lr", -1.0), ("lr", "fast"), ("batch_size", 0), ("max_steps", 2.5), ("epochs", True),
    ("precision", "fp8"), ("betas", [0.9]), ("grad_clip", 0), ("train_ratio", 1.0),
    ("min_lr", 1.0), ("warmup_steps", -1),
])
def test_invalid_value_names_the_field(field, value):
    with pytest.raises(ConfigError, match=repr(field)):
        TrainConfig.from_dict({field: value})


def test_batch_must_be_multiple_of_micro_batch():
    with pytest.raises(ConfigError, match="multiple of 'micro_batch_size'"):
        TrainConfig(batch_size=6, micro_batch_size=4)


def test_needs_steps_or_epochs():
    with pytest.raises(ConfigError, match="max_steps"):
        TrainConfig(epochs=None, max_steps=None)


def test_bad_model_override_and_preset():
    with pytest.raises(ConfigError, match="n_layer"):
        TrainConfig(model={"n_layer": 3})
    with pytest.raises(ConfigError, match="unknown preset") as err:
        TrainConfig(preset="gpt5")
    # the Llama 3 / Qwen3 presets pretrain takes are offered too, not only GPT-2's
    assert "gpt2-small" in str(err.value) and "tiny-llama" in str(err.value)
    assert "qwen3-0.6b" in str(err.value)
    with pytest.raises(ConfigError, match="top level"):
        TrainConfig(model={"context_length": 64})


def test_file_errors(tmp_path):
    with pytest.raises(MissingFileError, match="nope.yaml"):
        read_config_file(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        read_config_file(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ScratchLLMError, match="mapping"):
        read_config_file(listing)
    ini = tmp_path / "x.ini"
    ini.write_text("a=1\n")
    with pytest.raises(ConfigError, match=r"must end in \.yaml"):
        read_config_file(ini)


def test_package_exports():
    import scratchllm.train as train_pkg
    from scratchllm.train.loop import train

    assert train_pkg.train is train and train_pkg.TrainConfig is TrainConfig
    with pytest.raises(AttributeError):
        train_pkg.no_such_name


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """README's `--set lr=3e-4` and a YAML `lr: 3e-4`: PyYAML alone (YAML 1.1) reads both as the
    string '3e-4' and the config refuses it; YAML 1.2, TOML and JSON read a number."""
    from scratchllm.cli.pretrain import parse_sets

    assert parse_sets(["model.n_layers=6", "lr=3e-4", "min_lr=1E5", "seed=7", "device=cpu"]) \
        == {"model": {"n_layers": 6}, "lr": 3e-4, "min_lr": 1e5, "seed": 7, "device": "cpu"}
    assert parse_sets(["sample_prompt=1e3x"]) == {"sample_prompt": "1e3x"}
    path = tmp_path / "c.yaml"
    path.write_text("lr: 3e-4\nmin_lr: -2.5e-5\nweight_decay: .1\nsample_prompt: '3e-4'\n")
    values = read_config_file(path)
    assert values == {"lr": 0.0003, "min_lr": -2.5e-5, "weight_decay": 0.1,
                      "sample_prompt": "3e-4"}
    assert TrainConfig.from_dict({"lr": values["lr"], "max_steps": 1}).lr == 0.0003
