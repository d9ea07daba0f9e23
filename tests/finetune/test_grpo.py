"""GRPO end to end on the toy task: groups of answers, no value model, k3 KL in the loss."""

from __future__ import annotations

import pytest

from rl_support import TOY, lowercase_fraction, prompts_file, tiny_byte_model
from scratchllm.finetune.rl import FunctionReward, finetune_rl
from scratchllm.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grpo_raises_the_reward_with_a_bounded_kl(tmp_path):
    base = tiny_byte_model(tmp_path / "base")
    result = finetune_rl(base, prompts_file(tmp_path), tmp_path / "run",
                         reward=FunctionReward(lowercase_fraction), algorithm="grpo",
                         max_steps=12, rollout_batch=8, group_size=4, minibatch=16,
                         ppo_epochs=2, kl_coef=0.04, **TOY)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "train"]
    assert len(rows) == 12 and not result.interrupted
    assert "value_loss" not in rows[0] and rows[0]["kl"] == 0.0
    start = sum(r["reward_mean"] for r in rows[:3]) / 3
    end = sum(r["reward_mean"] for r in rows[-3:]) / 3
    assert start < 0.2 and end > start + 0.2, [round(r["reward_mean"], 3) for r in rows]
    assert all(0 < r["kl"] < 40 for r in rows[1:])       # k3: positive once the policy moved
    assert all(r["group_std"] > 0 for r in rows)
    assert 0 <= rows[-1]["clipfrac"] <= 1 and rows[-1]["approx_kl"] >= 0


def test_grpo_with_one_update_per_batch_never_clips(tmp_path):
    """mu = 1: the ratio is exactly 1 in the only update, so nothing is clipped."""
    base = tiny_byte_model(tmp_path / "base")
    finetune_rl(base, prompts_file(tmp_path), tmp_path / "run",
                reward=FunctionReward(lowercase_fraction), algorithm="grpo", max_steps=2,
                rollout_batch=4, group_size=2, minibatch=8, ppo_epochs=1, **TOY)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "train"]
    assert [r["clipfrac"] for r in rows] == [0.0, 0.0]
    assert all(r["approx_kl"] == pytest.approx(0.0, abs=1e-7) for r in rows)
