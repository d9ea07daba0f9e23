"""Mean-pooled reward models: the score is the head's average over the response and its end."""

from __future__ import annotations

import json
import random

import pytest
import torch

from scratchllm.data.instruction import format_prompt, split_entries
from scratchllm.errors import ConfigError, DataError
from scratchllm.finetune.reward import finetune_reward
from scratchllm.finetune.reward_model import (
    attach_reward_head, open_reward_model, reward_metadata, save_reward_model,
)
from scratchllm.finetune.reward_pooling import finish_with_start, pooled_scores
from scratchllm.finetune.reward_task import RewardPairs
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.weights.model_dir import save_model_dir

END = 50256


def head_model() -> GPTModel:
    torch.manual_seed(0)
    model = attach_reward_head(GPTModel(GPTConfig.preset("tiny", vocab_size=50257)))
    torch.nn.init.normal_(model.out_head.weight)
    torch.nn.init.normal_(model.out_head.bias)
    return model.eval()


def test_finish_with_start_tracks_the_response_through_cuts():
    assert finish_with_start([1, 2, 3, 4], 2, 9, 10) == ([1, 2, 3, 4, 9], 2)
    assert finish_with_start([1, 2, 3, 4, 9, 9], 2, 9, 10) == ([1, 2, 3, 4, 9], 2)
    # the first two tokens are cut: the response now starts at 0
    assert finish_with_start([1, 2, 3, 4], 2, 9, 3) == ([3, 4, 9], 0)
    assert finish_with_start([1, 2, 3, 4], 3, 9, 3) == ([3, 4, 9], 1)
    # an empty answer (only end ids) still has its end token to average
    assert finish_with_start([1, 2, 7], 2, 9, 10, end_ids=[7]) == ([1, 2, 9], 2)


def test_mean_pooling_is_the_average_over_the_response_of_each_row_alone():
    model = head_model()
    rows = [[5, 17, 300, 42, END], [7, 8, 9, 10, 11, 12, END]]
    starts = [2, 4]
    expected = []
    with torch.no_grad():
        for row, start in zip(rows, starts):
            per_token = model(torch.tensor([row]))[0, :, 0]
            expected.append(sum(per_token[start:].tolist()) / (len(row) - start))
        ids = torch.tensor([rows[0] + [END, END], rows[1]])
        got = pooled_scores(model, ids, torch.tensor([5, 7]), torch.tensor(starts), "mean")
        last = pooled_scores(model, ids, torch.tensor([5, 7]), torch.tensor(starts), "last")
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-5, rtol=0)
    assert abs(last[0] - model(torch.tensor([rows[0]]))[0, -1, 0]) < 1e-5
    with pytest.raises(DataError, match="where each response starts"):
        pooled_scores(model, ids, torch.tensor([5, 7]), None, "mean")
    with pytest.raises(DataError, match="inside the rows"):
        pooled_scores(model, ids, torch.tensor([5, 7]), torch.tensor([5, 0]), "mean")


def test_a_saved_mean_model_scores_prompt_and_answer_by_hand(tmp_path, gpt2_tok):
    model = head_model()
    meta = reward_metadata(prompt_style="alpaca", end_id=END, emb_dim=64, end_ids=[END],
                           pooling="mean", normalization={"mean": 1.0, "std": 2.0, "count": 2})
    scorer = open_reward_model(save_reward_model(tmp_path / "rm", model, gpt2_tok, meta))
    assert scorer.pooling == "mean"
    entry = {"instruction": "Name a colour.", "input": ""}
    prompt = gpt2_tok.encode_ordinary(format_prompt(entry))
    answer = gpt2_tok.encode_ordinary("Blue, I think.")
    with torch.no_grad():
        per_token = model(torch.tensor([prompt + answer + [END]]))[0, :, 0]
    by_hand = (per_token[len(prompt):].mean() - 1.0) / 2.0
    got = scorer.score([entry, entry], ["Blue, I think.", "No."], batch_size=2)
    assert abs(got[0] - by_hand) < 1e-5
    torch.testing.assert_close(scorer.score([entry], ["Blue, I think."]), got[:1])
    with pytest.raises(ConfigError, match="unknown reward pooling"):
        reward_metadata(prompt_style="alpaca", end_id=END, emb_dim=64, pooling="max")


@pytest.fixture(scope="module")
def word_pairs(tmp_path_factory):
    """The rejected answer has a rude word somewhere in the middle (as in the book's data)."""
    rng = random.Random(5)
    words = ["red", "blue", "table", "river", "stone", "cloud", "apple", "green"]
    entries = []
    for _ in range(96):
        head = " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
        tail = " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
        entries.append({"instruction": f"Say {rng.choice(words)}.", "input": "",
                        "chosen": f"{head} {tail}.", "rejected": f"{head} stupid {tail}."})
    path = tmp_path_factory.mktemp("pool") / "pairs.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_finetune_reward_mean_trains_saves_and_reports_what_it_scores(word_pairs, tmp_path,
                                                                      gpt2_tok):
    torch.manual_seed(1)
    base = save_model_dir(tmp_path / "base", GPTModel(GPTConfig.preset(
        "tiny", n_layers=1, emb_dim=32, context_length=64)), gpt2_tok)
    run = finetune_reward(base, word_pairs, tmp_path / "rm", epochs=2, batch_size=8, lr=3e-3,
                          pooling="mean", eval_every=20, device="cpu", progress=False)
    results = json.loads((run.out_dir / "results.json").read_text())
    assert results["settings"]["pooling"] == "mean"
    assert results["test"]["accuracy"] >= 0.9 and results["train"]["accuracy"] >= 0.9
    scorer = open_reward_model(run.out_dir)
    assert scorer.pooling == "mean" and scorer.info["read_at"].startswith("mean")
    # the saved model reproduces results.json's test accuracy from its starts
    test = split_entries(json.loads(word_pairs.read_text()))[2]
    pairs = RewardPairs(test, gpt2_tok, "alpaca", end_id=END, end_ids=[END], limit=64)
    chosen = scorer.raw_scores(pairs.chosen, 4, pairs.chosen_starts)
    rejected = scorer.raw_scores(pairs.rejected, 4, pairs.rejected_starts)
    assert float((chosen > rejected).float().mean()) == pytest.approx(results["test"]["accuracy"])
    # and the test answers through the public text API agree with the token path
    texts = scorer.score(test, [e["chosen"] for e in test])
    torch.testing.assert_close(texts, scorer.normalize(chosen), atol=1e-5, rtol=0)
    norm = run.normalization
    assert norm["count"] == 2 * results["train"]["pairs"] and norm["std"] > 0
