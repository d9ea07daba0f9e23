"""The reward model's scalar head and scoring API (book ch. 8): last real token, save/open, score."""

from __future__ import annotations

import pytest
import torch

from scratchllm.data.instruction import format_prompt
from scratchllm.errors import CheckpointError, DataError
from scratchllm.finetune.reward_model import (
    attach_reward_head, finish_sequence, last_real_scores, open_reward_model, reward_metadata,
    save_reward_model,
)
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.llama import LlamaModel
from scratchllm.model.llama_config import LlamaConfig
from scratchllm.weights.model_dir import save_model_dir

PAD = 50256


def reward_net(family: str = "gpt") -> torch.nn.Module:
    torch.manual_seed(0)
    model = (GPTModel(GPTConfig.preset("tiny", vocab_size=50257)) if family == "gpt" else
             LlamaModel(LlamaConfig.preset("tiny-llama", vocab_size=50257, context_length=64)))
    attach_reward_head(model)
    assert not model.out_head.weight.any() and not model.out_head.bias.any()  # starts neutral
    torch.nn.init.normal_(model.out_head.weight)  # a head that tells rows apart
    torch.nn.init.normal_(model.out_head.bias)
    return model.eval()


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_last_real_token_with_right_and_left_padding(family):
    """Both paddings give, per row, the head output of the row's last token run alone."""
    model = reward_net(family)
    short, long_ = [5, 17, 300, 42], [7, 8, 9, 10, 11, 12, 13]
    alone = torch.stack([model(torch.tensor([s]))[0, -1, 0] for s in (short, long_)])
    right = torch.tensor([short + [PAD] * 3, long_])
    right_mask = torch.tensor([[1] * 4 + [0] * 3, [1] * 7])
    left = torch.tensor([[PAD] * 3 + short, long_])
    left_mask = torch.tensor([[0] * 3 + [1] * 4, [1] * 7])
    with torch.no_grad():
        torch.testing.assert_close(last_real_scores(model, right, right_mask), alone,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(last_real_scores(model, left, left_mask), alone,
                                   atol=1e-5, rtol=0)
        # without the mask, left padding changes the short row (it attends to the pads)
        unmasked = last_real_scores(model, left)
        assert not torch.allclose(unmasked[0], alone[0], atol=1e-4)
        with pytest.raises(DataError, match="no real token"):
            last_real_scores(model, right, torch.tensor([[0] * 7, [1] * 7]))


def test_finish_sequence_appends_one_end_and_keeps_the_tail():
    assert finish_sequence([1, 2, 3], 9, 10) == [1, 2, 3, 9]
    assert finish_sequence([1, 2, 3, 9, 9], 9, 10) == [1, 2, 3, 9]
    assert finish_sequence([1, 2, 3, 7], 9, 10, end_ids=[7]) == [1, 2, 3, 9]
    assert finish_sequence([1, 2, 3, 4, 5], 9, 3) == [4, 5, 9]


@pytest.fixture(scope="module")
def saved_rm(tmp_path_factory, gpt2_tok):
    model = reward_net()
    meta = reward_metadata(prompt_style="alpaca", end_id=gpt2_tok.eot_id, emb_dim=64,
                           end_ids=[gpt2_tok.eot_id],
                           normalization={"mean": 0.5, "std": 2.0, "count": 4})
    return save_reward_model(tmp_path_factory.mktemp("rm") / "model", model, gpt2_tok, meta), model


def test_open_and_score_match_a_manual_forward(saved_rm, gpt2_tok):
    path, model = saved_rm
    scorer = open_reward_model(path)
    assert scorer.model.out_head.out_features == 1 and scorer.prompt_style == "alpaca"
    prompts = ["Name a colour.", {"instruction": "Add the numbers.", "input": "2 and 3"}]
    responses = ["Blue.", "The sum is 5."]
    got = scorer.score(prompts, responses, batch_size=1)
    assert got.shape == (2,) and got.dtype == torch.float32
    entries = [{"instruction": "Name a colour.", "input": ""},
               {"instruction": "Add the numbers.", "input": "2 and 3"}]
    manual = []
    for entry, response in zip(entries, responses):
        ids = gpt2_tok.encode_ordinary(format_prompt(entry)) + gpt2_tok.encode_ordinary(response)
        with torch.no_grad():
            raw = model(torch.tensor([ids + [gpt2_tok.eot_id]]))[0, -1, 0]
        manual.append((raw - 0.5) / 2.0)
    torch.testing.assert_close(got, torch.stack(manual), atol=1e-5, rtol=0)
    # batched (right-padded) equals one at a time; raw = normalised * std + mean
    torch.testing.assert_close(scorer.score(prompts, responses, batch_size=8), got,
                               atol=1e-5, rtol=0)
    raw = scorer.score(prompts, responses, normalize=False)
    torch.testing.assert_close(raw, got * 2.0 + 0.5, atol=1e-5, rtol=0)
    # a response that already ends with its end id scores the same
    ids = [scorer.prompt_ids(p) for p in prompts]
    with_end = [gpt2_tok.encode_ordinary(r) + [gpt2_tok.eot_id] for r in responses]
    torch.testing.assert_close(scorer.score_ids(ids, with_end), got, atol=1e-5, rtol=0)
    # already-formatted prompt texts, verbatim
    texts = [format_prompt(e) for e in entries]
    torch.testing.assert_close(scorer.score(texts, responses, formatted=True), got,
                               atol=1e-4, rtol=0)


def test_open_refuses_other_models_and_mismatched_inputs(saved_rm, gpt2_tok, tmp_path):
    lm = save_model_dir(tmp_path / "lm", GPTModel(GPTConfig.preset("tiny")), gpt2_tok)
    with pytest.raises(CheckpointError, match="not a reward model"):
        open_reward_model(lm)
    scorer = open_reward_model(saved_rm[0], dtype="bfloat16")
    assert scorer.model.out_head.weight.dtype == torch.bfloat16
    assert scorer.score(["Hi"], ["Hello"]).dtype == torch.float32
    with pytest.raises(DataError, match="one response per prompt"):
        scorer.score(["a", "b"], ["x"])
    with pytest.raises(DataError, match="instruction"):
        scorer.score([3], ["x"])
