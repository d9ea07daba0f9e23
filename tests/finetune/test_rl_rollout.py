"""RL rollouts: seeded sampling, end tokens, per-token log-probs, prompts and rewards."""

from __future__ import annotations

import json

import pytest
import torch

from rl_support import PROMPTS, byte_tokenizer, lowercase_fraction
from scratchllm.data.instruction import format_prompt
from scratchllm.errors import ConfigError, DataError, MissingFileError
from scratchllm.finetune.rl.policy import ValueHead
from scratchllm.finetune.rl.prompts import load_prompts, make_prompt
from scratchllm.finetune.rl.reward import FunctionReward, load_reward_fn, score_with_penalty
from scratchllm.finetune.rl.rollout import (encode_prompt, sample_rollout, score_tokens,
                                            step_generator)
from scratchllm.model import GPTConfig, GPTModel

pytestmark = pytest.mark.usefixtures("one_thread")
EOT = 256


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return GPTModel(GPTConfig.preset("tiny", vocab_size=257, n_layers=1, emb_dim=32,
                                     context_length=48)).eval()


def rollout(model, tok, seed, *, prompts=PROMPTS[:6], temperature=1.0, max_new=8, step=0):
    items = [make_prompt({"instruction": p}, "raw") for p in prompts]
    ids = [encode_prompt(p, tok, "raw", 40) for p in items]
    return sample_rollout(model, tok, items, ids, max_new_tokens=max_new,
                          temperature=temperature, eos_ids=[EOT],
                          generator=step_generator(seed, step, torch.device("cpu")))


def test_same_seed_same_rollouts_other_seed_or_step_others(model, tok):
    a, b = rollout(model, tok, 7), rollout(model, tok, 7)
    assert torch.equal(a.sequences, b.sequences) and a.responses == b.responses
    assert not torch.equal(a.sequences, rollout(model, tok, 8).sequences)
    assert not torch.equal(a.sequences, rollout(model, tok, 7, step=1).sequences)


def test_layout_left_padded_prompts_then_responses(model, tok):
    r = rollout(model, tok, 1)
    assert r.prompt_width == max(len(p) for p in PROMPTS[:6])
    for row, prompt in enumerate(PROMPTS[:6]):
        ids = r.sequences[row, r.prompt_width - len(prompt):r.prompt_width].tolist()
        assert tok.decode(ids) == prompt
        assert r.attention[row, :r.prompt_width].sum() == len(prompt)
    assert r.response_mask.shape == (6, 8) and bool((r.lengths == 8).all())  # EOS ~ 1/257


def test_logprobs_equal_each_row_scored_alone_at_the_temperature(model, tok):
    """Left padding changes nothing: each row's tokens scored without padding, by hand."""
    r = rollout(model, tok, 3, temperature=0.7)
    head = ValueHead(32)
    with torch.no_grad():
        head.weight.normal_()
        scored = score_tokens(model, r, 0.7, value_head=head, with_entropy=True)
    for row, prompt in enumerate(PROMPTS[:6]):
        n = len(prompt)
        seq = r.sequences[row, r.prompt_width - n:].unsqueeze(0)
        hidden = {}
        hook = model.final_norm.register_forward_hook(lambda m, a, o: hidden.update(h=o))
        with torch.no_grad():
            logits = model(seq)[0, n - 1:-1] / 0.7
        hook.remove()
        logp = torch.log_softmax(logits, -1)
        expected = logp.gather(-1, seq[0, n:].unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(scored["logprobs"][row], expected, rtol=1e-5, atol=1e-5)
        entropy = -(logp.exp() * logp).sum(-1)
        torch.testing.assert_close(scored["entropy"][row], entropy, rtol=1e-5, atol=1e-5)
        values = (hidden["h"][0, n - 1:-1] @ head.weight[0]) + head.bias
        torch.testing.assert_close(scored["values"][row], values, rtol=1e-5, atol=1e-5)


def test_value_head_starts_at_zero(model, tok):
    r = rollout(model, tok, 2)
    with torch.no_grad():
        values = score_tokens(model, r, 1.0, value_head=ValueHead(32))["values"]
    assert values.abs().max() == 0


def force_end_logit(model, value: float) -> None:
    """Set the end token's logit everywhere: the model always (or never) ends."""
    def hook(module, args, output):
        output = output.clone()
        output[..., EOT] = value
        return output
    model.out_head.register_forward_hook(hook)


def test_responses_end_at_the_first_end_token(model, tok):
    """A model that always says end-of-text: every answer is the end token alone."""
    force_end_logit(model, 100.0)
    r = rollout(model, tok, 4)
    assert r.ended.all() and (r.lengths == 1).all() and r.responses == [""] * 6
    assert r.response_tokens[:, 0].tolist() == [EOT] * 6


def test_answers_without_an_end_token_are_penalised(model, tok):
    force_end_logit(model, -100.0)
    r = rollout(model, tok, 5)
    assert not r.ended.any() and (r.lengths == 8).all()
    r.ended[0] = True  # as if the first had ended
    raw, scored = score_with_penalty(FunctionReward(lowercase_fraction), r.prompts,
                                     r.responses, r.ended, 0.5)
    expected = torch.tensor([lowercase_fraction("", t) for t in r.responses])
    torch.testing.assert_close(raw, expected)
    torch.testing.assert_close(scored, expected - torch.tensor([0.0] + [0.5] * 5))


def test_json_prompts_split_and_format_like_finetune_instruct(tmp_path):
    entries = [{"instruction": f"Say {i}.", "input": "now" if i % 2 else "", "output": "x"}
               for i in range(20)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    train, test = load_prompts(path, "alpaca")
    assert len(train) == 17 and len(test) == 2  # 85 / 10 (/ 5 validation, unused)
    assert train[1].model_text == format_prompt(entries[1], "alpaca")
    assert train[1].text == "Say 1.\n\nnow" and train[0].text == "Say 0."
    assert test[0].entry["instruction"] == "Say 17."
    phi3, _ = load_prompts(path, "phi3")
    assert phi3[0].model_text == format_prompt(entries[0], "phi3")
    path.write_text(json.dumps([{"instruction": "x", "input": 3}] * 4), encoding="utf-8")
    with pytest.raises(DataError, match="entry 0 has a non-text input"):
        load_prompts(path, "alpaca")


def test_text_prompts_one_per_line_split_like_json(tmp_path):
    path = tmp_path / "p.txt"
    lines = [f"  line {i} " if i % 3 else f"line {i}" for i in range(20)]
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    train, test = load_prompts(path, "raw")
    assert [p.text for p in train] == [f"line {i}" for i in range(17)]  # blank lines skipped
    assert [p.model_text for p in test] == ["line 17", "line 18"]  # held out, as JSON's 10%
    assert test[0].entry == {"instruction": "line 17", "input": ""}
    alpaca, _ = load_prompts(path, "alpaca")
    assert alpaca[1].model_text == format_prompt({"instruction": "line 1", "input": ""}, "alpaca")
    path.write_text("first\n", encoding="utf-8")
    with pytest.raises(DataError, match="no training prompts"):
        load_prompts(path, "raw")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")
    with pytest.raises(MissingFileError):
        load_prompts(tmp_path / "missing.txt")


def test_reward_fn_specs(tmp_path):
    (tmp_path / "rewards.py").write_text(
        "def score(prompt, response):\n    return len(response) - len(prompt)\n"
        "def bad(prompt, response):\n    return 'high'\n", encoding="utf-8")
    fn = load_reward_fn(f"{tmp_path / 'rewards.py'}:score")
    assert fn.score(["ab", "a"], ["abcd", ""]).tolist() == [2.0, -1.0]
    with pytest.raises(ConfigError, match="finite number"):
        load_reward_fn(f"{tmp_path / 'rewards.py'}:bad").score(["a"], ["b"])
    for spec, error, match in [("rewards.py", ConfigError, "FILE.py:NAME"),
                               (f"{tmp_path / 'rewards.txt'}:score", ConfigError, ".py"),
                               (f"{tmp_path / 'nope.py'}:score", MissingFileError, "not found"),
                               (f"{tmp_path / 'rewards.py'}:missing", ConfigError,
                                "bad, score")]:
        with pytest.raises(error, match=match):
            load_reward_fn(spec)
    (tmp_path / "raises.py").write_text(
        "from dataclasses import dataclass\n@dataclass\nclass Rule:\n    n: int = 0\n"
        "def score(prompt, response):\n    return 1 / Rule().n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="raises.py:score raised ZeroDivisionError"):
        load_reward_fn(f"{tmp_path / 'raises.py'}:score").score(["a"], ["b"])
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="ModuleNotFoundError"):
        load_reward_fn(f"{tmp_path / 'broken.py'}:score")


def test_some_end_early_some_run_out(model, tok):
    """End token a bit likelier than the rest: each row is cut right after its first end id."""
    force_end_logit(model, 4.0)
    r = rollout(model, tok, 11, prompts=PROMPTS[:12], max_new=10)
    assert 0 < int(r.ended.sum()) < 12 and len(set(r.lengths.tolist())) > 2
    for row in range(12):
        n, tokens = int(r.lengths[row]), r.response_tokens[row].tolist()
        assert EOT not in tokens[:n - 1]
        assert (tokens[n - 1] == EOT) == bool(r.ended[row])
        assert r.response_mask[row].tolist() == [1.0] * n + [0.0] * (10 - n)
        assert r.attention[row, r.prompt_width:].tolist() == [1] * n + [0] * (10 - n)
        body = tokens[:n - 1] if r.ended[row] else tokens[:n]
        assert r.responses[row] == tok.decode(body).strip()
