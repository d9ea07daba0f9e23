"""Reward-model journey (book ch. 8): ``finetune reward`` on Hugging Face GPT-2 and Llama
directories, then ``evaluate reward`` comparing two answer files, as a user runs them."""

from __future__ import annotations

import json
import statistics

import pytest

pytestmark = pytest.mark.slow

ARGS = ["--epochs", "2", "--batch-size", "4", "--lr", "3e-3", "--eval-every", "2",
        "--device", "cpu", "--precision", "fp32", "--quiet"]


@pytest.fixture(scope="module")
def reward_runs(cli_many, gpt2_hf_dir, llama_hf_dir, preference_file, e2e_root):
    """GPT-2 with every weight trained, Llama with LoRA, a margin, centering, mean pooling."""
    outs = {"gpt2": e2e_root / "rm" / "gpt2", "llama": e2e_root / "rm" / "llama"}
    procs = cli_many([
        ["finetune", "reward", "--model", gpt2_hf_dir, "--data", preference_file,
         "--out", outs["gpt2"], *ARGS],
        ["finetune", "reward", "--model", llama_hf_dir, "--data", preference_file,
         "--out", outs["llama"], "--train-mode", "lora", "--lora-rank", "4", "--margin", "0.5",
         "--center-coef", "0.01", "--pooling", "mean", *ARGS],
    ])
    return {family: (outs[family], proc.stdout) for family, proc in zip(outs, procs)}


@pytest.fixture(scope="module")
def answer_files(preference_file, e2e_root):
    """Two models' test answers in `finetune instruct`'s test_responses.json layout."""
    entries = json.loads(preference_file.read_text())[:6]
    files = {}
    for name, key in (("polite", "chosen"), ("blunt", "rejected")):
        records = [{"instruction": e["instruction"], "input": e["input"], "output": e["output"],
                    "model_response": e[key]} for e in entries]
        files[name] = e2e_root / "rm" / f"{name}.json"
        files[name].write_text(json.dumps(records), encoding="utf-8")
    return files


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_finetune_reward_reports_every_split(reward_runs, family):
    out, stdout = reward_runs[family]
    results = json.loads((out / "results.json").read_text())
    for split in ("train", "val", "test"):
        assert isinstance(results[split]["accuracy"], float)
        assert isinstance(results[split]["margin"], float)
    assert results["train"]["pairs"] == 17 and results["test"]["pairs"] == 2
    assert results["train"]["accuracy"] == 1.0  # every pair has the same two answers
    assert "pairwise accuracy: train 100.00%" in stdout
    meta = json.loads((out / "model" / "config.json").read_text())["metadata"]["reward_model"]
    assert meta["normalization"]["count"] == 34 and meta["prompt_style"] == "alpaca"
    assert meta["pooling"] == ("mean" if family == "llama" else "last")
    assert (out / "adapter.safetensors").is_file() == (family == "llama")


def test_evaluate_reward_scores_and_compares_answer_files(cli, cli_error, reward_runs,
                                                          answer_files, tmp_path):
    from scratchllm.finetune.reward_model import open_reward_model

    out = reward_runs["gpt2"][0]
    polite, blunt = answer_files["polite"], answer_files["blunt"]
    proc = cli(["evaluate", "reward", "--reward-model", out, "--responses", polite, blunt,
                "--json"])
    report = json.loads(proc.stdout)
    assert [f["file"] for f in report["files"]] == [str(polite), str(blunt)]
    scorer = open_reward_model(out)  # the library scores the same answers the same way
    records = json.loads(polite.read_text())
    expected = scorer.score([r["instruction"] for r in records],
                            [r["model_response"] for r in records])
    assert report["files"][0]["mean"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert report["files"][0]["median"] == pytest.approx(statistics.median(expected.tolist()),
                                                         abs=1e-5)
    (pair,) = report["win_rates"]
    assert (pair["a"], pair["b"], pair["prompts"]) == (str(polite), str(blunt), 6)
    assert pair["a_win_rate"] == 1.0 and pair["a_wins"] == 6  # the chosen style wins
    table = cli(["evaluate", "reward", "--reward-model", out, "--responses", polite,
                 blunt]).stdout
    assert f"{polite} beats {blunt}: 100.0% of 6 shared prompts" in table

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "Hi", "answer": "Hello"}]))
    line = cli_error(["evaluate", "reward", "--reward-model", out, "--responses", bad],
                     "evaluate")
    assert "model_response" in line
    line = cli_error(["evaluate", "reward", "--reward-model", polite.parent / "nowhere",
                      "--responses", polite], "evaluate")
    assert "does not exist" in line
    line = cli_error(["finetune", "reward", "--model", out, "--data", bad, "--out",
                      tmp_path / "rm"], "finetune")
    assert "chosen" in line and not (tmp_path / "rm").exists()
