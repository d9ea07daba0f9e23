"""Training a reward model (book ch. 8): loss values, learning, normalisation, LoRA, resume."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch

from scratchllm.data.instruction import split_entries
from scratchllm.errors import ConfigError, DataError
from scratchllm.finetune.reward import finetune_reward
from scratchllm.finetune.reward_model import open_reward_model
from scratchllm.finetune.reward_task import reward_losses
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.llama import LlamaModel
from scratchllm.model.llama_config import LlamaConfig
from scratchllm.weights.model_dir import save_model_dir

from reward_support import WORDS, write_thanks_pairs


def nll_sigmoid(x: float) -> float:
    """-log sigmoid(x), written out: log(1 + e^-x)."""
    return math.log1p(math.exp(-x))


def test_reward_loss_matches_hand_computed_values():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    plain = reward_losses(chosen, rejected)
    torch.testing.assert_close(plain, torch.tensor([nll_sigmoid(1.0), nll_sigmoid(-1.0)]))
    assert plain[0].item() == pytest.approx(0.3132617, abs=1e-6)
    both = reward_losses(chosen, rejected, margin=0.5, center_coef=0.1)
    expected = [nll_sigmoid(0.5) + 0.1 * 3.0 ** 2, nll_sigmoid(-1.5) + 0.1 * 2.0 ** 2]
    torch.testing.assert_close(both, torch.tensor(expected))
    assert both[1].item() == pytest.approx(1.7014132 + 0.4, abs=1e-6)
    # equal rewards: ln 2, whatever their common value (centering aside)
    assert reward_losses(torch.tensor([3.0]), torch.tensor([3.0])).item() == \
        pytest.approx(math.log(2))


@pytest.fixture(scope="module")
def toy_pairs(tmp_path_factory):
    """120 pairs whose chosen answer ends with 'thanks' and rejected with 'no'."""
    return write_thanks_pairs(tmp_path_factory.mktemp("rm") / "pairs.json", 120, seed=3,
                              max_words=4)


@pytest.fixture(scope="module")
def tiny_gpt_dir(tmp_path_factory, gpt2_tok):
    torch.manual_seed(1)
    model = GPTModel(GPTConfig.preset("tiny", n_layers=1, emb_dim=32, context_length=64))
    return save_model_dir(tmp_path_factory.mktemp("gpt") / "base", model, gpt2_tok)


@pytest.fixture(scope="module")
def trained(tiny_gpt_dir, toy_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "rm"
    return finetune_reward(tiny_gpt_dir, toy_pairs, out, epochs=1, batch_size=8, lr=3e-3,
                           eval_every=4, center_coef=0.01, keep_best=True, device="cpu",
                           progress=False)


def test_training_separates_held_out_pairs(trained):
    results = json.loads((trained.out_dir / "results.json").read_text())
    for split in ("train", "val", "test"):
        assert set(results[split]) >= {"accuracy", "margin", "loss", "pairs"}
    assert [results[s]["pairs"] for s in ("train", "val", "test")] == [102, 6, 12]
    assert results["test"]["accuracy"] >= 0.9 and results["test"]["margin"] > 0.2
    assert results["train"]["accuracy"] >= 0.9
    for name in ("metrics.jsonl", "loss.png", "accuracy.png", "best/config.json"):
        assert (trained.out_dir / name).is_file(), name
    meta = json.loads((trained.model_dir / "config.json").read_text())["metadata"]
    assert meta["reward_model"]["head"] == [1, 32]
    assert meta["reward_model"]["prompt_style"] == "alpaca"
    evals = [json.loads(l) for l in (trained.out_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in evals if r["event"] == "train")
    # the zero head ties every pair at first: loss ln 2, no pair won; all of it was learned
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and first["accuracy"] == 0


def test_scores_are_normalised_on_the_training_answers(trained, toy_pairs):
    train, _, test = split_entries(json.loads(toy_pairs.read_text()))
    scorer = open_reward_model(trained.out_dir)  # the run folder opens its model/
    prompts = [e["instruction"] for e in train] * 2
    answers = [e["chosen"] for e in train] + [e["rejected"] for e in train]
    scores = scorer.score(prompts, answers, batch_size=16)
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert scores.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    norm = trained.normalization
    assert norm["count"] == 2 * len(train) and "chosen and rejected" in norm["reference"]
    # held-out: chosen answers score higher than their rejected twins
    chosen = scorer.score([e["instruction"] for e in test], [e["chosen"] for e in test])
    rejected = scorer.score([e["instruction"] for e in test], [e["rejected"] for e in test])
    assert (chosen > rejected).float().mean() >= 0.9


def test_reference_responses_file_sets_the_normalisation(tiny_gpt_dir, toy_pairs, tmp_path,
                                                         gpt2_tok):
    answers = [{"instruction": f"Say {w}.", "input": "", "model_response": f"{w} {w}"}
               for w in WORDS]
    ref = tmp_path / "test_responses.json"
    ref.write_text(json.dumps(answers))
    torch.manual_seed(1)  # a model instruction-tuned with Phi-3 prompts says so in its metadata
    phi3 = save_model_dir(tmp_path / "phi3", GPTModel(GPTConfig.preset(
        "tiny", n_layers=1, emb_dim=32, context_length=64)), gpt2_tok, {"prompt_style": "phi3"})
    result = finetune_reward(phi3, toy_pairs, tmp_path / "rm", epochs=1, batch_size=8,
                             lr=1e-3, train_mode="last-block", reference_responses=ref,
                             device="cpu", progress=False)
    scorer = open_reward_model(result.model_dir)
    assert scorer.prompt_style == "phi3"
    scores = scorer.score([a["instruction"] for a in answers],
                          [a["model_response"] for a in answers])
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert scores.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert result.normalization["count"] == len(WORDS)
    with pytest.raises(DataError, match="lacks field"):
        finetune_reward(tiny_gpt_dir, toy_pairs, tmp_path / "bad", reference_responses=ref,
                        reference_key="answer", device="cpu", progress=False)
    assert not (tmp_path / "bad").exists()  # refused before any folder was made
    with pytest.raises(ConfigError, match="train mode"):
        finetune_reward(tiny_gpt_dir, toy_pairs, tmp_path / "bad", train_mode="all",
                        progress=False)
    with pytest.raises(ConfigError, match="margin"):
        finetune_reward(tiny_gpt_dir, toy_pairs, tmp_path / "bad", margin=-1.0, progress=False)
    with pytest.raises(ConfigError, match="max_length"):
        finetune_reward(tiny_gpt_dir, toy_pairs, tmp_path / "bad", max_length=0, progress=False)


def test_lora_reward_model_on_llama(toy_pairs, gpt2_tok, tmp_path):
    torch.manual_seed(0)
    base = save_model_dir(tmp_path / "llama", LlamaModel(LlamaConfig.preset(
        "tiny-llama", vocab_size=50257, context_length=64, n_layers=1, emb_dim=32,
        hidden_dim=64)), gpt2_tok)
    result = finetune_reward(base, toy_pairs, tmp_path / "rm", epochs=1, batch_size=8,
                             lr=5e-3, train_mode="lora", lora_rank=4, device="cpu",
                             progress=False)
    assert 0 < result.trainable_params < result.total_params / 4
    assert (result.out_dir / "adapter.safetensors").is_file()
    scorer = open_reward_model(result.out_dir)
    assert isinstance(scorer.model, LlamaModel) and scorer.model.out_head.out_features == 1
    tuned = safetensors.torch.load_file(str(result.model_dir / "model.safetensors"))
    start = safetensors.torch.load_file(str(base / "model.safetensors"))
    changed = [k for k in start if k in tuned and not torch.equal(start[k], tuned[k])]
    assert any("W_query" in k for k in changed)  # LoRA deltas merged into the weights
    assert result.metrics["train"]["accuracy"] > 0.7


def test_resume_equals_an_uninterrupted_run(tiny_gpt_dir, toy_pairs, tmp_path):
    common = dict(epochs=1, batch_size=8, micro_batch_size=4, lr=2e-3, warmup_steps=2,
                  eval_every=4, keep_best=True, device="cpu", progress=False)
    straight = finetune_reward(tiny_gpt_dir, toy_pairs, tmp_path / "a", **common)
    stopped = finetune_reward(tiny_gpt_dir, toy_pairs, tmp_path / "b", stop_at=5, **common)
    assert stopped.interrupted and stopped.steps == 5 and not stopped.metrics
    resumed = finetune_reward(tiny_gpt_dir, toy_pairs, tmp_path / "b", resume=True, **common)
    assert resumed.steps == straight.steps == 12
    for sub in ("model", "best"):
        a = safetensors.torch.load_file(str(tmp_path / "a" / sub / "model.safetensors"))
        b = safetensors.torch.load_file(str(tmp_path / "b" / sub / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    assert resumed.metrics == straight.metrics
    assert resumed.normalization == straight.normalization


def test_a_run_stopped_early_leaves_a_reward_model_that_scores(tiny_gpt_dir, toy_pairs, tmp_path):
    """Stopped before the end (stop_at; Ctrl-C or a kill mid-save alike) there is no OUT/model:
    OUT/latest/, the last checkpoint, must open as a reward model and score like the
    checkpoint's weights (it was saved without its reward metadata, so nothing loaded it)."""
    out = tmp_path / "stopped"
    stopped = finetune_reward(tiny_gpt_dir, toy_pairs, out, epochs=1, batch_size=8, lr=2e-3,
                              save_every=2, stop_at=3, device="cpu", progress=False)
    assert stopped.interrupted and not (out / "model").exists()
    scorer = open_reward_model(out)
    saved = safetensors.torch.load_file(str(out / "latest" / "model.safetensors"))
    assert json.loads((out / "latest" / "config.json").read_text())["metadata"]["step"] == 3
    assert scorer.model.out_head.weight.shape[0] == 1
    assert torch.equal(scorer.model.out_head.weight.detach(), saved["out_head.weight"])
