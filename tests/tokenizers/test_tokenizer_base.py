"""The shared Tokenizer contract, checked on every tokenizer type."""

from __future__ import annotations

import json

import pytest

from scratchllm.errors import TokenizerError
from scratchllm.tokenizers import (
    BPETokenizer,
    GPT2Tokenizer,
    SimpleTokenizer,
    Tokenizer,
    tokenizer_from_dict,
)

SAMPLE = "It was the last he painted, you know.<|endoftext|>Mrs. Gisburn said."


@pytest.fixture(scope="module", params=["simple", "bpe", "gpt2"])
def any_tok(request, shared_data) -> Tokenizer:
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    if request.param == "simple":
        return SimpleTokenizer.from_text(text)
    if request.param == "bpe":
        return BPETokenizer.train(text, vocab_size=400)
    return GPT2Tokenizer(shared_data / "gpt2")


def test_is_a_tokenizer_with_eot(any_tok):
    assert isinstance(any_tok, Tokenizer)
    assert any_tok.special_tokens["<|endoftext|>"] == any_tok.eot_id < any_tok.vocab_size


def test_refuses_special_unless_allowed(any_tok):
    for allowed in ("none", set(), frozenset(), ()):
        with pytest.raises(TokenizerError, match=r"allowed_special=\{'<\|endoftext\|>'\}"):
            any_tok.encode(SAMPLE, allowed_special=allowed)
    for allowed in ("all", {"<|endoftext|>"}):
        ids = any_tok.encode(SAMPLE, allowed_special=allowed)
        assert ids.count(any_tok.eot_id) == 1
    assert any_tok.eot_id not in any_tok.encode_ordinary(SAMPLE)


def test_to_dict_is_json_and_rebuilds(any_tok):
    clone = tokenizer_from_dict(json.loads(json.dumps(any_tok.to_dict())))
    assert type(clone) is type(any_tok)
    assert clone.encode(SAMPLE, allowed_special="all") == any_tok.encode(SAMPLE, allowed_special="all")
    assert clone.vocab_size == any_tok.vocab_size


def test_all_ids_in_range_and_text_round_trips(any_tok):
    text = "Mrs. Gisburn said, \"the picture\" -- and laughed."
    ids = any_tok.encode(text)
    assert ids and all(0 <= i < any_tok.vocab_size for i in ids)
    if not isinstance(any_tok, SimpleTokenizer):  # the word tokenizer normalises spacing
        assert any_tok.decode(ids) == text


def test_decode_accepts_array_likes_and_rejects_non_ints(any_tok):
    import numpy as np
    import torch

    ids = any_tok.encode("the picture")
    expected = any_tok.decode(ids)
    assert any_tok.decode(np.array(ids)) == expected
    assert any_tok.decode(list(torch.tensor(ids))) == expected  # a list of 0-d tensors
    assert any_tok.decode(tuple(ids)) == expected
    with pytest.raises(TokenizerError, match="integer token ids"):
        any_tok.decode([1.5, 2])
