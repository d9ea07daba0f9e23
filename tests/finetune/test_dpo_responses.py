"""``finetune dpo`` answers the test split as ``finetune instruct`` does (test_responses.json).

The file lets ``evaluate reward --responses INSTRUCT DPO`` compare the two models prompt by
prompt; the answers must be the aligned policy's own greedy ones, checked here against a
plain full-forward greedy loop on the saved model.
"""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.cli.main import main
from scratchllm.data.instruction import format_prompt, split_entries
from scratchllm.finetune.reward_model import attach_reward_head, reward_metadata, save_reward_model
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.weights.model_dir import load_model_dir, save_model_dir

NEW = 6  # test answers stay short: the point is which tokens, not how many


def greedy(model, tok, entry: dict) -> str:
    """Reference: argmax of a full forward pass per token, stopping at end of text."""
    ids = tok.encode_ordinary(format_prompt(entry))
    out = []
    with torch.no_grad():
        for _ in range(NEW):
            nxt = int(model(torch.tensor([ids + out]))[0, -1].argmax())
            if nxt == tok.eot_id:
                break
            out.append(nxt)
    return tok.decode(out).strip()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, gpt2_tok, instruct_file, preference_file):
    """instruct -> dpo from it, both through the CLI, on the same 20 prompts (2 in test)."""
    root = tmp_path_factory.mktemp("dpo_responses")
    torch.manual_seed(0)
    save_model_dir(root / "base", GPTModel(GPTConfig.preset("tiny")), gpt2_tok)
    common = ["--device", "cpu", "--precision", "fp32", "--batch-size", "4", "--quiet",
              "--max-new-tokens", str(NEW)]
    assert main(["finetune", "instruct", "--model", str(root / "base"), "--data",
                 str(instruct_file), "--out", str(root / "sft"), "--epochs", "1", "--lr", "1e-3",
                 *common]) == 0
    assert main(["finetune", "dpo", "--model", str(root / "sft"), "--data", str(preference_file),
                 "--out", str(root / "dpo"), "--lr", "1e-2", "--beta", "0.5", *common]) == 0
    return root


def test_dpo_writes_the_test_answers_of_the_aligned_policy(runs, gpt2_tok, preference_file,
                                                           capsys):
    path = runs / "dpo" / "test_responses.json"
    records = json.loads(path.read_text("utf-8"))
    test = split_entries(json.loads(preference_file.read_text("utf-8")))[2]
    assert len(records) == len(test) == 2
    for record, entry in zip(records, test):
        assert {k: record[k] for k in entry} == entry  # the entry itself, plus the answer
        assert set(record) == set(entry) | {"model_response"}
    dpo, _ = load_model_dir(runs / "dpo")
    assert [r["model_response"] for r in records] == [greedy(dpo, gpt2_tok, e) for e in test]
    # the aligned policy moved away from its start, so its answers are its own
    sft, _ = load_model_dir(runs / "sft")
    assert any(not torch.equal(a, b) for a, b in zip(dpo.state_dict().values(),
                                                     sft.state_dict().values()))
    instruct = json.loads((runs / "sft" / "test_responses.json").read_text("utf-8"))
    assert [r["instruction"] for r in instruct] == [r["instruction"] for r in records]


def test_evaluate_reward_compares_instruct_and_dpo_answers(runs, gpt2_tok, capsys):
    torch.manual_seed(1)
    model = attach_reward_head(GPTModel(GPTConfig.preset("tiny")))
    torch.nn.init.normal_(model.out_head.weight)
    rm = save_reward_model(runs / "rm", model, gpt2_tok, reward_metadata(
        prompt_style="alpaca", end_id=gpt2_tok.eot_id, emb_dim=64,
        normalization={"mean": 0.0, "std": 1.0, "count": 2}))
    capsys.readouterr()
    files = [str(runs / "sft" / "test_responses.json"), str(runs / "dpo" / "test_responses.json")]
    assert main(["evaluate", "reward", "--reward-model", str(rm), "--responses", *files,
                 "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [f["count"] for f in report["files"]] == [2, 2]
    assert report["win_rates"][0]["prompts"] == 2  # every test prompt matched across files


def test_no_test_responses_and_bad_length(tmp_path, dropout_model_dir, preference_file, capsys):
    args = ["finetune", "dpo", "--model", str(dropout_model_dir), "--data", str(preference_file),
            "--device", "cpu", "--quiet", "--batch-size", "8"]
    assert main([*args, "--out", str(tmp_path / "a"), "--no-test-responses"]) == 0
    assert (tmp_path / "a" / "latest").is_dir()
    assert not (tmp_path / "a" / "test_responses.json").exists()
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "b"), "--max-new-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_new_tokens" in err
    assert not (tmp_path / "b").exists()  # refused before any training
