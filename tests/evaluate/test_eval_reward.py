"""``evaluate_reward``: per-file statistics and win rates matched prompt by prompt (book ch. 8)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from scratchllm.errors import ConfigError, DataError
from scratchllm.evaluate.reward import evaluate_reward, format_reward_report, win_rate
from scratchllm.finetune.reward_model import (
    attach_reward_head, open_reward_model, reward_metadata, save_reward_model,
)
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import GPT2Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_win_rate_counts_shared_prompts_and_halves_ties():
    a = {("p", "", 0): 1.0, ("q", "", 0): 0.0, ("r", "", 0): 2.0, ("only a", "", 0): 9.0}
    b = {("p", "", 0): 0.5, ("q", "", 0): 0.0, ("r", "", 0): 3.0, ("only b", "", 0): -9.0}
    assert win_rate(a, b) == {"prompts": 3, "a_wins": 1, "ties": 1, "b_wins": 1,
                              "a_win_rate": pytest.approx(0.5)}
    assert win_rate({("x", "", 0): 1.0}, {("y", "", 0): 0.0})["a_win_rate"] is None


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, shared_data):
    tok = GPT2Tokenizer(shared_data / "gpt2")
    torch.manual_seed(0)
    model = attach_reward_head(GPTModel(GPTConfig.preset("tiny", n_layers=1, emb_dim=32)))
    torch.nn.init.normal_(model.out_head.weight)  # untrained but not constant
    meta = reward_metadata(prompt_style="alpaca", end_id=tok.eot_id, emb_dim=32,
                           normalization={"mean": 1.0, "std": 3.0, "count": 2})
    return save_reward_model(tmp_path_factory.mktemp("rm") / "model", model.eval(), tok, meta)


def write(path, records):
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_files_are_scored_and_compared_prompt_by_prompt(rm_dir, tmp_path):
    prompts = [("Name a colour.", ""), ("Add.", "2 and 3"), ("Name a colour.", "")]
    a = write(tmp_path / "a.json", [{"instruction": i, "input": x, "model_response": r}
                                    for (i, x), r in zip(prompts, ["Red.", "5", "Blue."])])
    # b answers in another order, repeats the colour prompt in the same order, adds one prompt
    b = write(tmp_path / "b.json", [
        {"instruction": "Add.", "input": "2 and 3", "model_response": "It is 5."},
        {"instruction": "Name a colour.", "model_response": "Green."},
        {"instruction": "Extra.", "input": "", "model_response": "x"},
        {"instruction": "Name a colour.", "input": "", "model_response": "Blue."}])
    report = evaluate_reward(rm_dir, [a, b], device="cpu")
    scorer = open_reward_model(rm_dir)
    score = lambda p, r: float(scorer.score([{"instruction": p[0], "input": p[1]}], [r])[0])  # noqa: E731
    sa = [score(p, r) for p, r in zip(prompts, ["Red.", "5", "Blue."])]
    file_a = report["files"][0]
    assert file_a["count"] == 3
    assert file_a["mean"] == pytest.approx(statistics.fmean(sa), abs=1e-5)
    assert file_a["median"] == pytest.approx(statistics.median(sa), abs=1e-5)
    # the pairs compared: Red. vs Green. (1st colour), Blue. vs Blue. (2nd: a tie), 5 vs It is 5.
    pairs = [(sa[0], score(prompts[0], "Green.")), (sa[2], sa[2]),
             (sa[1], score(prompts[1], "It is 5."))]
    wins = sum(x > y for x, y in pairs)
    (pair,) = report["win_rates"]
    assert pair["prompts"] == 3 and pair["ties"] == 1 and pair["a_wins"] == wins
    assert pair["a_win_rate"] == pytest.approx((wins + 0.5) / 3)
    assert report["normalization"]["std"] == 3.0
    text = format_reward_report(report)
    assert f"{a} beats {b}: {pair['a_win_rate'] * 100:.1f}% of 3 shared prompts" in text
    counts = {0: "0 wins, 1 tie, 2 losses", 1: "1 win, 1 tie, 1 loss", 2: "2 wins, 1 tie, 0 losses"}
    assert f"({counts[wins]})" in text  # the counts read as English


def test_bad_inputs_are_refused(rm_dir, tmp_path):
    with pytest.raises(ConfigError, match="at least one"):
        evaluate_reward(rm_dir, [], device="cpu")
    no_answer = write(tmp_path / "x.json", [{"instruction": "Hi", "output": "Hello"}])
    with pytest.raises(DataError, match="model_response"):
        evaluate_reward(rm_dir, [no_answer], device="cpu")
    report = evaluate_reward(rm_dir, [no_answer], response_key="output", device="cpu")
    assert report["files"][0]["count"] == 1 and report["win_rates"] == []
