"""``OUT/test_responses.json`` after PPO/GRPO: the held-out prompts of a text file or a JSON
file, raw or formatted, answered greedily by the final policy, in the layout ``evaluate reward``
reads."""

from __future__ import annotations

import json

import pytest
import torch

from rl_support import PROMPTS, TOY, lowercase_fraction, prompts_file, tiny_byte_model
from scratchllm.data.instruction import format_prompt
from scratchllm.evaluate.reward import score_file
from scratchllm.finetune.rl import FunctionReward, finetune_rl
from scratchllm.generate import generate_batch
from scratchllm.weights.auto import open_model

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = dict(reward=FunctionReward(lowercase_fraction), rollout_batch=4, minibatch=4,
           ppo_epochs=1, max_steps=1, **TOY)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_byte_model(tmp_path_factory.mktemp("responses") / "base")


def greedy(model_dir, texts: list[str]) -> list[str]:
    """The reference: each prompt text encoded alone (its last context - 1 tokens: a long
    Alpaca prompt overflows the toy's 48-token context), greedy, stopped at <|endoftext|>."""
    loaded = open_model(model_dir, device="cpu")
    tok, keep = loaded.tokenizer, loaded.model.config.context_length - 1
    answers = []
    for text in texts:
        new = generate_batch(loaded.model, [tok.encode_ordinary(text)[-keep:]],
                             TOY["max_new_tokens"],
                             temperature=0.0, eos_id=tok.eot_id)[0]
        answers.append(tok.decode(new).strip())
    return answers


class CountingScorer:
    """Stands in for a reward model: records what ``evaluate reward`` passes it."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict, str]] = []

    def score(self, prompts, responses, batch_size):
        self.seen += list(zip(prompts, responses))
        return torch.zeros(len(responses))


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_text_file_prompts_get_test_responses(base, tmp_path, algorithm):
    extra = {"algorithm": "grpo", "group_size": 2, "minibatch": 8} if algorithm == "grpo" else {}
    result = finetune_rl(base, prompts_file(tmp_path), tmp_path / "run", **{**RUN, **extra})
    assert result.responses_file == tmp_path / "run" / "test_responses.json"
    answers = json.loads(result.responses_file.read_text(encoding="utf-8"))
    held_out = PROMPTS[17:19]  # the 10% test split of the 20 lines
    assert [(a["instruction"], a["input"]) for a in answers] == [(p, "") for p in held_out]
    assert [a["model_response"] for a in answers] == greedy(result.model_dir, held_out)
    scorer = CountingScorer()  # evaluate reward reads the file as it reads instruct's
    records, _ = score_file(scorer, result.responses_file, "model_response", batch_size=8)
    assert len(records) == 2 and [p for p, _ in scorer.seen] == [
        {"instruction": p, "input": ""} for p in held_out]


@pytest.mark.parametrize("style", ["raw", "alpaca"])
def test_json_prompts_get_test_responses_in_any_style(base, tmp_path, style):
    entries = [{"instruction": f"say {w}", "input": "now" if i % 2 else "", "output": "x"}
               for i, w in enumerate(PROMPTS)]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries), encoding="utf-8")
    result = finetune_rl(base, data, tmp_path / "run", **{**RUN, "prompt_style": style})
    answers = json.loads(result.responses_file.read_text(encoding="utf-8"))
    assert [{k: a[k] for k in ("instruction", "input", "output")} for a in answers] == \
        entries[17:19]
    texts = [(e["instruction"] + (f"\n\n{e['input']}" if e["input"] else "")) if style == "raw"
             else format_prompt(e, style) for e in entries[17:19]]
    assert [a["model_response"] for a in answers] == greedy(result.model_dir, texts)


def test_no_test_responses_when_asked(base, tmp_path):
    result = finetune_rl(base, prompts_file(tmp_path), tmp_path / "run", test_responses=False,
                         **RUN)
    assert result.responses_file is None
    assert not (tmp_path / "run" / "test_responses.json").exists()
