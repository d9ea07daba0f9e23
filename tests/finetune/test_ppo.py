"""PPO end to end on a toy task: it learns, LoRA matches full at the start, resume is exact."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from rl_support import TOY, lowercase_fraction, prompts_file, tiny_byte_model
from scratchllm.errors import ConfigError, DataError
from scratchllm.finetune.rl import FunctionReward, finetune_rl
from scratchllm.train.metrics import read_metrics
from scratchllm.weights.model_dir import read_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    return tiny_byte_model(root / "base"), prompts_file(root)


def train_records(out) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train"]


def test_ppo_raises_the_reward_with_a_bounded_kl(toy, tmp_path):
    base, prompts = toy
    result = finetune_rl(base, prompts, tmp_path / "run", reward=FunctionReward(lowercase_fraction),
                         algorithm="ppo", max_steps=14, rollout_batch=16, minibatch=8,
                         ppo_epochs=2, kl_coef=0.01, **TOY)
    rows = train_records(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 15)) and result.steps == 14
    for key in ("reward_mean", "kl", "penalised_reward", "entropy", "clipfrac", "approx_kl",
                "value_loss", "response_len_mean", "eos_rate", "kl_coef"):
        assert all(isinstance(r[key], float) for r in rows), key
    start = sum(r["reward_mean"] for r in rows[:3]) / 3   # ~26/257 of the characters
    end = sum(r["reward_mean"] for r in rows[-3:]) / 3
    assert start < 0.2 and end > start + 0.2, [round(r["reward_mean"], 3) for r in rows]
    assert rows[0]["kl"] == 0.0                           # policy == reference at step 1
    assert all(0 < r["kl"] < 40 for r in rows[-3:])       # nats per 8-token answer
    assert rows[-1]["entropy"] < rows[0]["entropy"]
    assert (tmp_path / "run" / "reward.png").stat().st_size > 0
    assert result.model_dir == tmp_path / "run" / "latest"
    # the saved policy is the trained one: it now prefers lowercase letters when sampled
    from scratchllm.weights.auto import open_model
    from scratchllm.generate import generate_batch
    loaded = open_model(result.model_dir, device="cpu")
    tok = loaded.tokenizer
    answers = generate_batch(loaded.model, [tok.encode_ordinary("hi")] * 16, 8,
                             temperature=1.0, seed=1)
    share = sum(lowercase_fraction("", tok.decode(a)) for a in answers) / 16
    assert share > start + 0.2


def first_step(base, prompts, out, **extra) -> dict:
    finetune_rl(base, prompts, out, reward=FunctionReward(lowercase_fraction), algorithm="ppo",
                max_steps=1, rollout_batch=8, minibatch=8, ppo_epochs=1, **{**TOY, **extra})
    return train_records(out)[0]


def test_lora_ppo_equals_full_ppo_in_its_first_step(toy, tmp_path):
    """B = 0 at init: same rollouts, log-probs, zero KL and the same first losses."""
    base, prompts = toy
    full = first_step(base, prompts, tmp_path / "full")
    lora = first_step(base, prompts, tmp_path / "lora", lora={"rank": 4, "alpha": 8})
    for key in ("reward_mean", "kl", "entropy", "pg_loss", "value_loss", "clipfrac",
                "approx_kl", "response_len_mean", "penalised_reward", "value_mean"):
        assert lora[key] == full[key], key
    assert full["kl"] == 0.0
    # full fine-tuning moved every weight; LoRA only the adapted layers (merged into latest/)
    before = read_weights(base)
    after_full = read_weights(tmp_path / "full" / "latest")
    after_lora = read_weights(tmp_path / "lora" / "latest")
    for after in (after_full, after_lora):
        assert not torch.equal(before["trf_blocks.0.ff.fc1.weight"],
                               after["trf_blocks.0.ff.fc1.weight"])
    assert not torch.equal(before["out_head.weight"], after_full["out_head.weight"])
    assert torch.equal(before["out_head.weight"], after_lora["out_head.weight"])
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()


def strip_times(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "elapsed")} for r in rows]


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_resume_equals_an_uninterrupted_run(toy, tmp_path, algorithm):
    base, prompts = toy
    kwargs = dict(reward=FunctionReward(lowercase_fraction), algorithm=algorithm,
                  rollout_batch=4, group_size=2, minibatch=4, ppo_epochs=2, kl_target=1.0,
                  kl_horizon=50, max_steps=4, **TOY)
    if algorithm == "grpo":
        kwargs.pop("kl_target"), kwargs.pop("kl_horizon")
    whole = finetune_rl(base, prompts, tmp_path / "whole", **kwargs)
    stopped = finetune_rl(base, prompts, tmp_path / "parts", stop_at=2, **kwargs)
    assert stopped.interrupted and stopped.steps == 2
    assert (tmp_path / "parts" / "checkpoints").is_dir()
    resumed = finetune_rl(base, prompts, tmp_path / "parts", resume=True, **kwargs)
    assert resumed.steps == whole.steps == 4 and not resumed.interrupted
    assert strip_times(train_records(tmp_path / "parts")) == strip_times(
        train_records(tmp_path / "whole"))
    a, b = read_weights(tmp_path / "whole" / "latest"), read_weights(tmp_path / "parts" / "latest")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if algorithm == "ppo":  # the adaptive coefficient moved, and came back from the checkpoint
        coefs = [r["kl_coef"] for r in train_records(tmp_path / "whole")]
        assert len(set(coefs)) > 1
        # the value head came back from the checkpoint too, and is saved beside the policy
        heads = [load_file(str(tmp_path / run / "value_head.safetensors"))
                 for run in ("whole", "parts")]
        assert all(torch.equal(heads[0][k], heads[1][k]) for k in ("weight", "bias"))


def test_resume_refuses_other_settings(toy, tmp_path):
    base, prompts = toy
    kwargs = dict(reward=FunctionReward(lowercase_fraction), rollout_batch=4, minibatch=4,
                  ppo_epochs=1, max_steps=3, **TOY)
    finetune_rl(base, prompts, tmp_path / "run", stop_at=1, **kwargs)
    with pytest.raises(ConfigError, match="kl_coef"):
        finetune_rl(base, prompts, tmp_path / "run", resume=True, kl_coef=0.5, **kwargs)
    kwargs["max_steps"] = 1  # step 1 is done: fewer would end at once without a word
    finetune_rl(base, prompts, tmp_path / "run", resume=True, stop_at=2, **{**kwargs, "max_steps": 3})
    with pytest.raises(ConfigError, match="at step 2, past the 1 steps asked for; pass --max-steps 3"):
        finetune_rl(base, prompts, tmp_path / "run", resume=True, **kwargs)


def test_bad_settings_fail_before_any_work(toy, tmp_path):
    base, prompts = toy
    reward = FunctionReward(lowercase_fraction)
    with pytest.raises(ConfigError, match="minibatch"):
        finetune_rl(base, prompts, tmp_path / "a", reward=reward, rollout_batch=6, minibatch=4,
                    **TOY)
    with pytest.raises(ConfigError, match="group-size"):
        finetune_rl(base, prompts, tmp_path / "b", reward=reward, algorithm="grpo",
                    group_size=1, **TOY)
    with pytest.raises(ConfigError, match="exactly one reward"):
        finetune_rl(base, prompts, tmp_path / "c", **TOY)
    with pytest.raises(DataError, match="rollout-batch"):
        finetune_rl(base, prompts, tmp_path / "d", reward=reward, rollout_batch=32,
                    minibatch=4, **TOY)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_sigterm_mid_run_checkpoints_and_resume_finishes(toy, tmp_path):
    """SIGTERM during step 2 (from inside the reward): the step completes, is checkpointed,
    and --resume goes on from step 3."""
    import os
    import signal

    base, prompts = toy
    calls = []

    def reward(prompt: str, response: str) -> float:
        calls.append(1)
        if len(calls) == 5:  # the first answer of step 2 (4 per step)
            os.kill(os.getpid(), signal.SIGTERM)
        return lowercase_fraction(prompt, response)

    kwargs = dict(rollout_batch=4, minibatch=4, ppo_epochs=1, max_steps=4, **TOY)
    stopped = finetune_rl(base, prompts, tmp_path / "run", reward=FunctionReward(reward), **kwargs)
    assert stopped.interrupted and stopped.steps == 2 and stopped.stop_signal == signal.SIGTERM
    assert (tmp_path / "run" / "checkpoints" / "step-00000002").is_dir()
    first = train_records(tmp_path / "run")
    done = finetune_rl(base, prompts, tmp_path / "run", resume=True,
                       reward=FunctionReward(lowercase_fraction), **kwargs)
    assert done.steps == 4 and not done.interrupted
    rows = train_records(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and strip_times(rows[:2]) == strip_times(first)


def test_a_stopped_lora_run_leaves_a_merged_latest_that_opens(toy, tmp_path):
    """Ctrl-C in a LoRA run: latest/ is the merged policy (generate and chat open it) and
    remembers the run's prompt format; the checkpoint keeps LoRA's layout for --resume."""
    from scratchllm.weights.auto import open_model

    base, prompts = toy
    stopped = finetune_rl(base, prompts, tmp_path / "run", reward=FunctionReward(lowercase_fraction),
                          algorithm="ppo", max_steps=4, stop_at=1, rollout_batch=4, minibatch=4,
                          ppo_epochs=1, lora={"rank": 4, "alpha": 8},
                          **{**TOY, "prompt_style": "alpaca"})
    assert stopped.interrupted
    latest = tmp_path / "run" / "latest"
    assert not any("lora" in key for key in read_weights(latest))
    loaded = open_model(latest, device="cpu")
    assert loaded.metadata.get("prompt_style") == "alpaca"
    checkpoint, = (tmp_path / "run" / "checkpoints").iterdir()
    assert any("lora" in key for key in read_weights(checkpoint))
