"""RLHF journey (book ch. 8): ``finetune ppo`` with a reward function and with a reward model,
PPO on a Hugging Face GPT-2 and GRPO with LoRA on a Llama directory, then ``generate`` and
``evaluate reward`` on what they wrote, as a user runs them."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

RL_ARGS = ["--max-steps", "2", "--rollout-batch", "2", "--minibatch", "2", "--ppo-epochs", "1",
           "--max-new-tokens", "6", "--lr", "1e-3", "--device", "cpu", "--precision", "fp32",
           "--quiet"]
REWARD_FN = '''
def score(prompt: str, response: str) -> float:
    """Longer answers to longer prompts: any rule-based reward works."""
    return len(response.split()) / (1 + len(prompt.split()))
'''


@pytest.fixture(scope="module")
def reward_file(e2e_root):
    path = e2e_root / "ppo" / "rewards.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(REWARD_FN, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reward_model(cli, gpt2_hf_dir, preference_file, e2e_root):
    out = e2e_root / "ppo" / "rm"
    cli(["finetune", "reward", "--model", gpt2_hf_dir, "--data", preference_file, "--out", out,
         "--epochs", "1", "--batch-size", "4", "--lr", "3e-3", "--device", "cpu",
         "--precision", "fp32", "--quiet"])
    return out


@pytest.fixture(scope="module")
def rl_runs(cli_many, gpt2_hf_dir, llama_hf_dir, instruct_file, reward_file, reward_model,
            e2e_root):
    """PPO (full weights, reward function) on GPT-2; GRPO (LoRA, reward model) on Llama."""
    outs = {"ppo": e2e_root / "ppo" / "gpt2-ppo", "grpo": e2e_root / "ppo" / "llama-grpo"}
    procs = cli_many([
        ["finetune", "ppo", "--policy", gpt2_hf_dir, "--reward-fn", f"{reward_file}:score",
         "--prompts", instruct_file, "--out", outs["ppo"], "--kl-target", "2",
         "--save-every", "1", *RL_ARGS],
        ["finetune", "ppo", "--policy", llama_hf_dir, "--reward-model", reward_model,
         "--prompts", instruct_file, "--out", outs["grpo"], "--algorithm", "grpo",
         "--group-size", "2", "--lora-rank", "4", "--kl-coef", "0.04", *RL_ARGS],
    ])
    return {name: (outs[name], proc.stdout) for name, proc in zip(outs, procs)}


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_runs_log_every_step_and_save_a_model(rl_runs, algorithm):
    out, stdout = rl_runs[algorithm]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    keys = {"reward_mean", "kl", "penalised_reward", "entropy", "clipfrac", "approx_kl",
            "response_len_mean", "eos_rate"}
    keys |= {"value_loss"} if algorithm == "ppo" else set()
    assert all(keys <= set(r) for r in rows)
    assert rows[0]["kl"] == 0.0 and (out / "reward.png").is_file()
    assert f"{algorithm} steps 2 | reward" in stdout and "model:" in stdout
    answers = json.loads((out / "test_responses.json").read_text())
    assert len(answers) == 2 and all("model_response" in a and "instruction" in a
                                     for a in answers)  # finetune instruct's layout
    assert (out / "adapter" / "adapter_config.json").is_file() == (algorithm == "grpo")
    assert (out / "checkpoints").is_dir() == (algorithm == "ppo")  # --save-every 1
    assert (out / "value_head.safetensors").is_file() == (algorithm == "ppo")
    assert ("value head:" in stdout) == (algorithm == "ppo")


def test_the_policy_generates_and_its_answers_are_scored(cli, rl_runs, reward_model):
    ppo, grpo = rl_runs["ppo"][0], rl_runs["grpo"][0]
    for out in (ppo, grpo):
        assert cli(["generate", "--model", out, "--max-new-tokens", "4", "Add 1 and 2."]
                   ).stdout.startswith("Add 1 and 2.")
    report = json.loads(cli(["evaluate", "reward", "--reward-model", reward_model, "--responses",
                             ppo / "test_responses.json", grpo / "test_responses.json",
                             "--json"]).stdout)
    assert len(report["files"]) == 2 and len(report["win_rates"]) == 1


def test_bad_reward_functions_are_one_line_errors(cli_error, gpt2_hf_dir, instruct_file,
                                                  reward_file, tmp_path):
    for spec, expected in [(f"{reward_file}:nothing", "defines no function 'nothing'"),
                           (str(reward_file), "FILE.py:NAME"),
                           (f"{tmp_path / 'absent.py'}:score", "not found")]:
        line = cli_error(["finetune", "ppo", "--policy", gpt2_hf_dir, "--reward-fn", spec,
                          "--prompts", instruct_file, "--out", tmp_path / "out", *RL_ARGS],
                         "finetune")
        assert expected in line
    assert not (tmp_path / "out").exists()


def test_a_new_ppo_run_starts_its_value_head_from_a_saved_one(cli, rl_runs, gpt2_hf_dir,
                                                               instruct_file, reward_file,
                                                               e2e_root):
    """``--value-head FILE`` as the README shows it: the new run's saved head names its origin."""
    import safetensors

    saved = rl_runs["ppo"][0] / "value_head.safetensors"
    out = e2e_root / "ppo" / "gpt2-ppo-again"
    args = [*RL_ARGS]
    args[args.index("--max-steps") + 1] = "1"
    stdout = cli(["finetune", "ppo", "--policy", gpt2_hf_dir, "--reward-fn",
                  f"{reward_file}:score", "--prompts", instruct_file, "--out", out,
                  "--value-head", saved, *args]).stdout
    assert f"value head: {out / 'value_head.safetensors'}" in stdout
    with safetensors.safe_open(str(out / "value_head.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert meta["init"] == str(saved) and meta["step"] == "1"
