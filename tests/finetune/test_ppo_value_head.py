"""PPO's value head is saved beside the policy, reloads into a new run, and leaves latest/ an
ordinary model directory."""

from __future__ import annotations

import pytest
import safetensors
import safetensors.torch
import torch

from rl_support import TOY, lowercase_fraction, prompts_file, tiny_byte_model
from scratchllm.errors import ConfigError, MissingFileError
from scratchllm.finetune.rl import FunctionReward, finetune_rl
from scratchllm.finetune.rl.policy import ValueHead
from scratchllm.finetune.rl.value_file import load_value_head
from scratchllm.train.metrics import read_metrics
from scratchllm.weights.auto import open_model
from scratchllm.weights.model_dir import read_weights

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = dict(reward=FunctionReward(lowercase_fraction), rollout_batch=4, minibatch=4,
           ppo_epochs=2, max_steps=2, **TOY)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("value")
    return tiny_byte_model(root / "base"), prompts_file(root)


@pytest.fixture(scope="module")
def ppo_run(toy, tmp_path_factory):
    base, prompts = toy
    out = tmp_path_factory.mktemp("ppo") / "run"
    return finetune_rl(base, prompts, out, **RUN)


def first_row(out) -> dict:
    return next(r for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train")


def test_the_value_head_is_saved_beside_an_ordinary_policy(ppo_run):
    path = ppo_run.out_dir / "value_head.safetensors"
    assert ppo_run.value_head_file == path and path.is_file()
    saved = safetensors.torch.load_file(str(path))
    assert {k: tuple(v.shape) for k, v in saved.items()} == {"weight": (1, 32), "bias": (1,)}
    assert saved["weight"].abs().sum() > 0  # trained away from its zero start
    with safetensors.safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert meta["init"] == "zero" and meta["step"] == "2" and meta["emb_dim"] == "32"
    # latest/ holds the language model alone and opens like any model directory
    assert not any("value" in key for key in read_weights(ppo_run.model_dir))
    loaded = open_model(ppo_run.model_dir, device="cpu")
    assert loaded.model.out_head.weight.shape[0] == 257


def test_a_new_run_starts_its_critic_from_the_saved_head(toy, ppo_run, tmp_path):
    """Zero init: every first-step value is 0; from the file: the saved head's values."""
    base, prompts = toy
    assert first_row(ppo_run.out_dir)["value_mean"] == 0.0
    file = ppo_run.out_dir / "value_head.safetensors"
    again = finetune_rl(ppo_run.model_dir, prompts, tmp_path / "again", value_head=file,
                        **{**RUN, "max_steps": 1})
    assert first_row(again.out_dir)["value_mean"] != 0.0
    with safetensors.safe_open(str(again.value_head_file), "pt") as handle:
        assert handle.metadata()["init"] == str(file)


def test_a_finished_ppo_run_can_be_overwritten(toy, ppo_run, tmp_path):
    """The value head is one of the run's own files: --overwrite replaces the run instead of
    refusing it as a file scratchllm did not write (it did, at the end of the first run)."""
    base, prompts = toy
    out = tmp_path / "twice"
    finetune_rl(base, prompts, out, **{**RUN, "max_steps": 1})
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):  # a user's file is still protected
        finetune_rl(base, prompts, out, overwrite=True, **{**RUN, "max_steps": 1})
    (out / "notes.txt").unlink()
    again = finetune_rl(base, prompts, out, overwrite=True, **{**RUN, "max_steps": 1})
    assert again.value_head_file == out / "value_head.safetensors"
    assert again.value_head_file.is_file()


def test_bad_value_heads_are_refused_before_any_work(toy, ppo_run, tmp_path):
    base, prompts = toy
    file = ppo_run.out_dir / "value_head.safetensors"
    with pytest.raises(ConfigError, match="GRPO has no value model"):
        finetune_rl(base, prompts, tmp_path / "a", value_head=file,
                    **{**RUN, "algorithm": "grpo", "group_size": 2, "minibatch": 8})
    with pytest.raises(MissingFileError, match="value_head.safetensors"):
        finetune_rl(base, prompts, tmp_path / "b", value_head=tmp_path / "none.safetensors",
                    **RUN)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="same width"):
        load_value_head(ValueHead(16), file)


def test_grpo_saves_no_value_head(toy, tmp_path):
    base, prompts = toy
    result = finetune_rl(base, prompts, tmp_path / "grpo",
                         **{**RUN, "algorithm": "grpo", "group_size": 2, "minibatch": 8,
                            "max_steps": 1})
    assert result.value_head_file is None
    assert not (tmp_path / "grpo" / "value_head.safetensors").exists()
    assert torch.is_tensor(read_weights(result.model_dir)["out_head.weight"])
