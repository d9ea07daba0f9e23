"""DPO: the loss against hand-computed values, its gradient's direction, and a full run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scratchllm.cli.main import main
from scratchllm.data.preference import PreferenceDataset, preference_collate
from scratchllm.finetune.dpo import (
    dpo_batch,
    dpo_loss,
    frozen_copy,
    pair_logprobs,
    sequence_logprobs,
)
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import GPT2Tokenizer
from scratchllm.weights.model_dir import load_model_dir, save_model_dir


@pytest.fixture(scope="module")
def tok(shared_data):
    return GPT2Tokenizer(shared_data / "gpt2")


@pytest.fixture(scope="module")
def pairs(shared_data):
    return json.loads((shared_data / "instruction" / "instruction-data-with-preference.json")
                      .read_text("utf-8"))[:20]


def test_loss_is_ln2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -1.5, -7.25])
    loss, chosen, rejected = dpo_loss(logps, logps - 1.0, logps, logps - 1.0, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert chosen.abs().max() == 0 and rejected.abs().max() == 0


def test_loss_matches_hand_computation():
    # margin = (-1 - -1.5) - (-2 - -1.5) = 1 -> loss = log(1 + e^-0.1)
    loss, chosen, rejected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]),
                                      torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.1)))
    assert chosen.item() == pytest.approx(0.05) and rejected.item() == pytest.approx(-0.05)


def test_sequence_logprobs_average_and_sum():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[3, -100, 5, 6], [-100, -100, 0, -100]])
    logp = torch.log_softmax(logits, -1)
    sums = [logp[0, 0, 3] + logp[0, 2, 5] + logp[0, 3, 6], logp[1, 2, 0]]
    assert torch.allclose(sequence_logprobs(logits, targets, average=False), torch.stack(sums))
    assert torch.allclose(sequence_logprobs(logits, targets),
                          torch.stack([sums[0] / 3, sums[1] / 1]))


def test_one_step_raises_the_chosen_margin(tok, pairs):
    torch.manual_seed(0)
    policy = GPTModel(GPTConfig.preset("tiny"))
    reference = frozen_copy(policy)
    assert not any(p.requires_grad for p in reference.parameters())
    batch = preference_collate(PreferenceDataset(pairs[:2], tok), pad_id=tok.eot_id)
    loss, _ = dpo_batch(policy, reference, batch, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.5 * p.grad
        chosen, rejected = pair_logprobs(policy, batch)
        ref_chosen, ref_rejected = pair_logprobs(reference, batch)
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    assert (margin > 0).all()
    new_loss, stats = dpo_batch(policy, reference, batch, beta=0.1)
    assert new_loss.item() < math.log(2) and stats["reward_accuracy"] == 1.0


def test_cli_dpo_end_to_end(tmp_path, tok, pairs, capsys):
    torch.manual_seed(0)
    save_model_dir(tmp_path / "base", GPTModel(GPTConfig.preset("tiny")), tok)
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(pairs), encoding="utf-8")
    code = main(["finetune", "dpo", "--model", str(tmp_path / "base"), "--data", str(data),
                 "--out", str(tmp_path / "dpo"), "--beta", "0.5", "--lr", "1e-3",
                 "--eval-every", "100", "--device", "cpu", "--quiet"])
    assert code == 0
    assert "val reward margin" in capsys.readouterr().out
    evals = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").open()
             if '"eval"' in line]
    # evaluated after the first step and after the last (pretraining's and the book's schedule)
    assert [e["step"] for e in evals] == [1, 2]
    assert {"train_loss", "val_loss", "val_reward_accuracy"} <= set(evals[-1])
    tuned, _ = load_model_dir(tmp_path / "dpo")
    assert json.loads((tmp_path / "dpo" / "latest" / "config.json").read_text())["metadata"]["beta"] == 0.5
    assert tuned.config.to_dict() == GPTConfig.preset("tiny").to_dict()


def test_max_length_that_cuts_every_response_is_refused(tmp_path, tok, pairs, capsys):
    torch.manual_seed(0)
    save_model_dir(tmp_path / "base", GPTModel(GPTConfig.preset("tiny")), tok)
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(pairs), encoding="utf-8")
    shortest_prompt = min(len(PreferenceDataset([p], tok)[0]["chosen"]["ids"]) for p in pairs)
    code = main(["finetune", "dpo", "--model", str(tmp_path / "base"), "--data", str(data),
                 "--out", str(tmp_path / "dpo"), "--max-length", "20", "--device", "cpu",
                 "--quiet"])
    err = capsys.readouterr().err
    assert shortest_prompt > 20 and code == 2
    assert err.count("\n") == 1 and "--max-length 20" in err and "would learn nothing" in err
