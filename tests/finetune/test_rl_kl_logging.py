"""The logged KL: ``kl`` is the k3 estimate in PPO and GRPO alike, whatever the penalty uses,
with the k1 estimate beside it as ``kl_k1``; both are plotted."""

from __future__ import annotations

import math

import pytest
import torch

from rl_support import TOY, lowercase_fraction, prompts_file, tiny_byte_model
from scratchllm.finetune.rl import FunctionReward, finetune_rl
from scratchllm.finetune.rl import plots
from scratchllm.finetune.rl.losses import kl_statistics
from scratchllm.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kl_statistics_by_hand():
    """Answer A: tokens with p = .5, .25 under the policy and .25, .25 under the reference;
    answer B: one token, p = .25 vs .5, then padding (whatever its values, masked out).
    d = log p_ref - log p: A (-ln 2, 0), B (ln 2). k1 = -d sums to ln 2 and -ln 2 (mean 0);
    k3 = e^d - d - 1: A .5 + ln 2 - 1, B 2 - ln 2 - 1, mean exactly 1/4."""
    log = math.log
    logprobs = torch.tensor([[log(.5), log(.25)], [log(.25), 7.0]])
    ref = torch.tensor([[log(.25), log(.25)], [log(.5), -3.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    stats = kl_statistics(logprobs, ref, mask)
    assert stats["kl"] == pytest.approx(0.25, abs=1e-6)
    assert stats["kl_k1"] == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("kl")
    return tiny_byte_model(root / "base"), prompts_file(root)


def rows(out) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train"]


RUN = dict(reward=FunctionReward(lowercase_fraction), rollout_batch=4, minibatch=4,
           ppo_epochs=2, max_steps=3, kl_coef=0.0, **TOY)


def test_ppo_logs_the_same_kl_whatever_its_penalty_estimator(toy, tmp_path):
    """With a zero coefficient the penalty's estimator changes nothing in training, so the
    two runs are identical step for step, and so must their logged KL be."""
    base, prompts = toy
    k1 = rows(finetune_rl(base, prompts, tmp_path / "k1", kl_estimator="k1", **RUN).out_dir)
    k3 = rows(finetune_rl(base, prompts, tmp_path / "k3", kl_estimator="k3", **RUN).out_dir)
    assert [r["reward_mean"] for r in k1] == [r["reward_mean"] for r in k3]
    assert [(r["kl"], r["kl_k1"]) for r in k1] == [(r["kl"], r["kl_k1"]) for r in k3]
    assert k1[0]["kl"] == k1[0]["kl_k1"] == 0.0 and k1[-1]["kl"] > 0  # the policy moved


def test_both_algorithms_log_and_plot_kl_and_kl_k1(toy, tmp_path, monkeypatch):
    base, prompts = toy
    figures = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: (figures.append(fig),
                                                                      save(fig, path, **kw))[1])
    for algorithm, extra in (("ppo", {}), ("grpo", {"group_size": 2, "minibatch": 8})):
        out = finetune_rl(base, prompts, tmp_path / algorithm,
                          **{**RUN, "algorithm": algorithm, "kl_coef": 0.05, **extra}).out_dir
        logged = rows(out)
        assert all(r["kl"] >= 0 and isinstance(r["kl_k1"], float) for r in logged)
        assert logged[-1]["kl"] > 0 and (out / "reward.png").stat().st_size > 0
        bottom = figures[-1].axes[1]
        assert bottom.get_legend_handles_labels()[1] == ["kl (k3 estimate)",
                                                         "kl_k1 (k1 estimate)"]
        kl_line, k1_line = bottom.get_lines()
        assert list(kl_line.get_ydata()) == [r["kl"] for r in logged]
        assert list(k1_line.get_ydata()) == [r["kl_k1"] for r in logged]
