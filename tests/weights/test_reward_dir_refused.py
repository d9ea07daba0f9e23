"""A reward model's folder is not a language model: generate says so in one line (exit 2).

Its head has one output, so loading it as a language model used to fail deep inside with a
shape error on ``out_head.weight``; the user must instead learn what the folder is and which
commands take it.
"""

from __future__ import annotations

import pytest
import torch

from scratchllm.cli.main import main
from scratchllm.errors import CheckpointError
from scratchllm.finetune.reward_model import attach_reward_head, reward_metadata, save_reward_model
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import GPT2Tokenizer
from scratchllm.weights.auto import open_model
from scratchllm.weights.model_dir import load_model_dir


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, shared_data):
    """A ``finetune reward``-shaped output folder: OUT/model/ holds the reward model."""
    tok = GPT2Tokenizer(shared_data / "gpt2")
    torch.manual_seed(0)
    model = attach_reward_head(GPTModel(GPTConfig.preset("tiny")))
    meta = reward_metadata(prompt_style="alpaca", end_id=tok.eot_id, emb_dim=64,
                           normalization={"mean": 0.0, "std": 1.0, "count": 2})
    out = tmp_path_factory.mktemp("rm_run")
    save_reward_model(out / "model", model, tok, meta)
    return out


@pytest.mark.parametrize("sub", ["model", ""])
def test_generate_names_the_reward_model_and_its_commands(reward_run, sub, capsys):
    path = reward_run / sub if sub else reward_run
    code = main(["generate", "--model", str(path), "Hi", "--max-new-tokens", "2",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "reward model" in err and "evaluate reward" in err and "finetune ppo" in err
    assert "out_head" not in err and "shape" not in err and "Traceback" not in err


def test_library_loaders_raise_the_same_error(reward_run):
    for load in (load_model_dir, open_model):
        with pytest.raises(CheckpointError, match="holds a reward model"):
            load(reward_run / "model")
