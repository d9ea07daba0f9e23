"""Streaming and stop strings, with GPT-2's real tokenizer."""

from __future__ import annotations

import pytest
import torch

from scratchllm.generate import generate, generate_batch, stream
from scratchllm.model import GPTConfig, GPTModel, KVCache
from scratchllm.tokenizers import GPT2Tokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py: one_thread)."""


@pytest.fixture(scope="module")
def tokenizer(shared_data) -> GPT2Tokenizer:
    return GPT2Tokenizer(shared_data / "gpt2")


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(7)
    return GPTModel(GPTConfig.preset("tiny", context_length=48)).eval()


class ScriptedModel(torch.nn.Module):
    """Stands in for a GPT whose greedy continuation is a fixed list of tokens.

    Lets a test choose exactly which tokens come out (a character split over two tokens, a
    stop string spanning a token boundary) and still drive the real decoding loop and cache.
    """

    def __init__(self, prompt_len: int, script: list[int], vocab_size: int = 50257):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, context_length=64, emb_dim=8,
                                n_heads=1, n_layers=1)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.prompt_len, self.script = prompt_len, script

    def new_cache(self, max_length: int | None = None) -> KVCache:
        return KVCache(1, min(max_length or 64, self.config.context_length))

    def forward(self, token_ids, *, cache=None, attention_mask=None, last_only=False):
        batch, n = token_ids.shape
        seen = n + (cache.length if cache is not None else 0)
        if cache is not None:
            cache.advance(n)
        logits = torch.zeros(batch, n, self.config.vocab_size)
        logits[:, -1, self.script[seen - self.prompt_len]] = 1.0
        return logits


def test_stream_yields_the_same_tokens_as_generate(model, tokenizer):
    prompt = tokenizer.encode("Every effort moves you")
    new = generate(model, prompt, 25)[len(prompt):]
    assert list(stream(model, prompt, 25)) == new
    assert list(stream(model, prompt, 25, use_cache=False)) == new
    pieces = list(stream(model, prompt, 25, tokenizer=tokenizer))
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == tokenizer.decode(new)


def test_text_stream_only_emits_complete_characters(tokenizer):
    text = "café 😀 naïve ✓"
    script = tokenizer.encode(text)
    split = [tokenizer.decode([t]) for t in script]
    assert any("\ufffd" in s for s in split)  # some characters really are split over tokens
    prompt = [464]
    fake = ScriptedModel(len(prompt), script)
    pieces = list(stream(fake, prompt, len(script), tokenizer=tokenizer))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert list(stream(fake, prompt, len(script))) == script


def test_stop_string_spanning_tokens_stops_after_the_token_that_completes_it(tokenizer):
    script = tokenizer.encode("Hello world. The end. More text that must not appear")
    fake = ScriptedModel(2, script)
    out = generate(fake, [1, 2], len(script), stop_strings=["d. T"], tokenizer=tokenizer)
    text = tokenizer.decode(out[2:])
    assert text == "Hello world. The"  # the stop string is kept, nothing after its token
    pieces = list(stream(fake, [1, 2], len(script), stop_strings="d. T", tokenizer=tokenizer))
    assert "".join(pieces) == text
    # The earliest of several stop strings wins; one never produced changes nothing.
    out = generate(fake, [1, 2], len(script), stop_strings=["zzz", "end"], tokenizer=tokenizer)
    assert tokenizer.decode(out[2:]) == "Hello world. The end"
    out = generate(fake, [1, 2], len(script), stop_strings=["zzz"], tokenizer=tokenizer)
    assert out[2:] == script


def test_stop_string_in_the_prompt_does_not_stop(tokenizer):
    script = tokenizer.encode(" and then. Stop")
    prompt = tokenizer.encode("Stop")
    fake = ScriptedModel(len(prompt), script)
    out = generate(fake, prompt, len(script), stop_strings=["Stop"], tokenizer=tokenizer)
    assert tokenizer.decode(out) == "Stop and then. Stop"


def _first_stop(tokenizer, new: list[int], stop: str) -> list[int]:
    """Reference: the shortest prefix of ``new`` whose decoded text contains ``stop``."""
    for j in range(len(new)):
        if stop in tokenizer.decode(new[: j + 1]):
            return new[: j + 1]
    return new


def test_stop_strings_with_a_real_model_match_a_brute_force_reference(model, tokenizer):
    prompt = tokenizer.encode("I had always thought")
    free = generate(model, prompt, 30, temperature=1.0, seed=3)[len(prompt):]
    text = tokenizer.decode(free)
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop and "\ufffd" not in stop
    expected = _first_stop(tokenizer, free, stop)
    assert len(expected) < len(free)
    got = generate(model, prompt, 30, temperature=1.0, seed=3, stop_strings=[stop],
                   tokenizer=tokenizer)
    assert got == prompt + expected
    batch = generate_batch(model, [prompt, prompt[:2]], 30, stop_strings=[stop],
                           tokenizer=tokenizer)
    for row, p in zip(batch, [prompt, prompt[:2]]):
        greedy = generate(model, p, 30)[len(p):]
        assert row == _first_stop(tokenizer, greedy, stop)


@pytest.mark.parametrize("pieces, stops, expected", [
    # The stop string arrives over three pieces: nothing of it is ever emitted.
    (["Hello wo", "rld. T", "he", " end"], ["d. The"], ["Hello wo", "rl"]),
    # A partial match that does not complete is released when the next piece settles it.
    (["ab", "c<", "|e", "x", "yz"], ["<|end|>"], ["ab", "c", "<|ex", "yz"]),
    # The earliest of several stop strings wins; a stop at the very start leaves nothing.
    (["one two ", "three"], ["three", "two"], ["one "]),
    (["STOP here"], ["STOP"], []),
    (["no stop", " at all"], ["zzz"], ["no stop", " at all"]),
])
def test_cut_at_stop_strings_never_emits_any_part_of_a_stop(pieces, stops, expected):
    from scratchllm.generate import cut_at_stop_strings

    assert list(cut_at_stop_strings(iter(pieces), stops)) == expected
