"""DPO, PPO/GRPO and ``evaluate perplexity --instructions`` go on in the prompt format the
model was instruction-tuned with (as chat and the reward model already do), unless told
otherwise: DPO on a Phi-3-tuned model used to retrain it on Alpaca prompts and relabel it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rl_support import TOY, byte_tokenizer, lowercase_fraction, prompts_file
from scratchllm.cli.main import main
from scratchllm.finetune.dpo import finetune_dpo
from scratchllm.finetune.rl import FunctionReward, finetune_rl
from scratchllm.finetune.runs import tuned_prompt_style
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.weights.auto import open_model
from scratchllm.weights.model_dir import save_model_dir

DPO = dict(epochs=1, batch_size=8, device="cpu", precision="fp32", progress=False,
           generate_test=False)


def tiny(directory, tokenizer, metadata=None, vocab_size=50257):
    torch.manual_seed(0)
    config = GPTConfig.preset("tiny", n_layers=1, emb_dim=32, context_length=96,
                              vocab_size=vocab_size)
    return save_model_dir(directory, GPTModel(config), tokenizer, metadata)


@pytest.fixture(scope="module")
def phi3_model(tmp_path_factory, gpt2_tok):
    return tiny(tmp_path_factory.mktemp("phi3") / "model", gpt2_tok, {"prompt_style": "phi3"})


def style_of(model_dir) -> str | None:
    return open_model(model_dir, device="cpu").metadata.get("prompt_style")


def test_tuned_prompt_style_reads_the_header_of_a_model_or_run(phi3_model, gpt2_tok, tmp_path):
    assert tuned_prompt_style(phi3_model) == "phi3"
    run = tmp_path / "run"
    shutil.copytree(phi3_model, run / "latest")
    assert tuned_prompt_style(run) == "phi3"  # a run directory: its latest/ model
    assert tuned_prompt_style(tiny(tmp_path / "base", gpt2_tok)) is None  # never tuned
    assert tuned_prompt_style(tmp_path / "missing") is None  # opening it says what is wrong
    assert tuned_prompt_style("gpt2") is None  # a Hub name: nothing fetched here


def test_dpo_keeps_the_models_prompt_style_unless_told(phi3_model, preference_file, tmp_path):
    result = finetune_dpo(phi3_model, preference_file, tmp_path / "dpo", **DPO)
    assert style_of(result.model_dir) == "phi3"
    told = finetune_dpo(phi3_model, preference_file, tmp_path / "told", prompt_style="alpaca",
                        **DPO)
    assert style_of(told.model_dir) == "alpaca"


def test_dpo_cli_default_follows_the_model(phi3_model, preference_file, tmp_path):
    assert main(["finetune", "dpo", "--model", str(phi3_model), "--data", str(preference_file),
                 "--out", str(tmp_path / "dpo"), "--device", "cpu", "--quiet",
                 "--no-test-responses"]) == 0
    assert style_of(tmp_path / "dpo") == "phi3"


def test_ppo_keeps_the_policys_prompt_style(tmp_path):
    policy = tiny(tmp_path / "policy", byte_tokenizer(), {"prompt_style": "phi3"}, vocab_size=257)
    settings = {k: v for k, v in TOY.items() if k != "prompt_style"}
    result = finetune_rl(policy, prompts_file(tmp_path), tmp_path / "run",
                         reward=FunctionReward(lowercase_fraction), rollout_batch=4, minibatch=4,
                         ppo_epochs=1, max_steps=1, test_responses=False, **settings)
    assert style_of(result.model_dir) == "phi3"


def test_instruction_perplexity_uses_the_models_prompt_style(phi3_model, instruct_file, capsys):
    def perplexity(*extra: str) -> dict:
        assert main(["evaluate", "perplexity", "--model", str(phi3_model), "--instructions",
                     str(instruct_file), "--device", "cpu", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    default, phi3, alpaca = perplexity(), perplexity("--prompt-style", "phi3"), \
        perplexity("--prompt-style", "alpaca")
    assert default == phi3 and default != alpaca
