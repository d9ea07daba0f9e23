"""Reward-model ensembles (``finetune reward --ensemble K``): one directory, K members, the
mean of their normalised scores, normalised again; checked against the members opened alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from scratchllm.data.instruction import split_entries
from scratchllm.errors import CheckpointError, ConfigError
from scratchllm.evaluate.reward import evaluate_reward
from scratchllm.finetune.reward import finetune_reward
from scratchllm.finetune.reward_ensemble import EnsembleScorer
from scratchllm.finetune.reward_model import open_reward_model
from scratchllm.finetune.rl.reward import open_reward_source
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.weights.model_dir import save_model_dir

from reward_support import write_thanks_pairs


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """60 pairs whose chosen answer ends with 'thanks' and rejected with 'no'."""
    return write_thanks_pairs(tmp_path_factory.mktemp("ens") / "pairs.json", 60, seed=5,
                              max_words=3)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, gpt2_tok, pairs_file):
    torch.manual_seed(2)
    base = save_model_dir(tmp_path_factory.mktemp("gpt") / "base", GPTModel(GPTConfig.preset(
        "tiny", n_layers=1, emb_dim=16, n_heads=2, context_length=32)), gpt2_tok)
    out = tmp_path_factory.mktemp("run") / "rm"
    result = finetune_reward(base, pairs_file, out, epochs=1, batch_size=8, lr=3e-3,
                             pooling="mean", seed=7, ensemble=2, device="cpu", progress=False)
    return base, result


def test_ensemble_scores_are_the_mean_of_its_members_normalised(ensemble_run, pairs_file):
    _, result = ensemble_run
    out = result.out_dir
    assert result.model_dir == out / "model"
    assert {p.name for p in (out / "model").iterdir()} >= {"config.json", "member-1", "member-2"}
    ensemble = open_reward_model(out)  # the run folder opens its model/, as for one model
    assert isinstance(ensemble, EnsembleScorer) and len(ensemble.members) == 2
    members = [open_reward_model(out / "model" / f"member-{i}") for i in (1, 2)]
    assert not any(isinstance(m, EnsembleScorer) for m in members)
    entries = json.loads(pairs_file.read_text())
    train, _, test = split_entries(entries)
    prompts = [e["instruction"] for e in test]
    answers = [e["rejected"] for e in test]
    by_hand = sum(m.score(prompts, answers) for m in members) / 2  # each member normalised
    norm = json.loads((out / "model" / "config.json").read_text())["metadata"][
        "reward_model"]["normalization"]
    expected = (by_hand - norm["mean"]) / norm["std"]
    torch.testing.assert_close(ensemble.score(prompts, answers), expected, atol=1e-5, rtol=0)
    # normalised again: mean 0 / std 1 on the training split's chosen and rejected answers
    scores = ensemble.score([e["instruction"] for e in train] * 2,
                            [e["chosen"] for e in train] + [e["rejected"] for e in train])
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert scores.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    # the members differ (seeds 7 and 8), so the average is not just one of them
    alone = [m.score(prompts, answers) for m in members]
    assert not torch.allclose(alone[0], alone[1])


def test_ensemble_results_and_member_runs(ensemble_run):
    _, result = ensemble_run
    saved = json.loads((result.out_dir / "results.json").read_text())
    assert saved["settings"]["ensemble"] == 2 and saved["settings"]["member_seeds"] == [7, 8]
    assert [m["seed"] for m in saved["settings"]["members"]] == [7, 8]
    for split in ("train", "val", "test"):
        assert set(saved[split]) >= {"accuracy", "margin", "loss", "pairs"}
    assert saved["test"]["accuracy"] >= 0.8 and saved["train"]["accuracy"] >= 0.8
    for i in (1, 2):
        run = result.out_dir / "members" / f"member-{i}"
        assert (run / "metrics.jsonl").is_file() and (run / "results.json").is_file()
        member = json.loads((run / "results.json").read_text())
        assert member["model_dir"] == str(result.out_dir / "model" / f"member-{i}")
        assert member["settings"]["seed"] == 6 + i


def test_ensemble_opens_through_every_door(ensemble_run, pairs_file, tmp_path):
    _, result = ensemble_run
    answers = [{"instruction": "Say red.", "input": "", "model_response": r}
               for r in ("red thanks", "red no")]
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(answers))
    report = evaluate_reward(result.out_dir, [path], device="cpu")
    direct = open_reward_model(result.model_dir).score(["Say red."] * 2, ["red thanks", "red no"])
    assert report["files"][0]["mean"] == pytest.approx(direct.mean().item(), abs=1e-5)
    source = open_reward_source(reward_model=result.model_dir)  # what PPO/GRPO score with
    rl = source.score([{"instruction": "Say red.", "input": ""}] * 2, ["red thanks", "red no"])
    torch.testing.assert_close(rl, direct)
    assert rl[0] > rl[1]


def test_ensemble_refusals(ensemble_run, pairs_file, tmp_path):
    base, result = ensemble_run
    with pytest.raises(ConfigError, match="ensemble"):
        finetune_reward(base, pairs_file, tmp_path / "bad", ensemble=0, progress=False)
    with pytest.raises(ConfigError, match="shuffle"):
        finetune_reward(base, pairs_file, tmp_path / "bad", ensemble=2, shuffle_split=True,
                        progress=False)
    moved = tmp_path / "moved"  # only the model folder, without one member
    shutil.copytree(result.model_dir, moved)
    shutil.rmtree(moved / "member-2")
    with pytest.raises(CheckpointError, match="member-2"):
        open_reward_model(moved)


def test_cli_ensemble_option(ensemble_run, pairs_file, tmp_path, capsys):
    from scratchllm.cli.main import main as scratchllm_cli

    base, _ = ensemble_run
    args = ["finetune", "reward", "--model", str(base), "--data", str(pairs_file), "--epochs",
            "1", "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--quiet"]
    assert scratchllm_cli([*args, "--out", str(tmp_path / "rm"), "--ensemble", "2"]) == 0
    assert isinstance(open_reward_model(tmp_path / "rm"), EnsembleScorer)
    assert "pairwise accuracy: train" in capsys.readouterr().out
    assert scratchllm_cli([*args, "--out", str(tmp_path / "bad"), "--ensemble", "0"]) == 2
    assert "ensemble must be a whole number" in capsys.readouterr().err
