"""Streaming decode: pieces are whole characters and join to exactly ``decode(all ids)``."""

from __future__ import annotations

import pytest

from scratchllm.tokenizers import (
    BPETokenizer,
    GPT2Tokenizer,
    IncrementalDecoder,
    SimpleTokenizer,
    decode_stream,
)

TEXT = "Streaming 😀 emoji, 中文 and café.\nNext line 👨‍👩‍👧"


@pytest.fixture(scope="module")
def gpt2(shared_data):
    return GPT2Tokenizer(shared_data / "gpt2")


def test_pieces_are_complete_characters(gpt2):
    ids = gpt2.encode(TEXT)
    pieces = list(decode_stream(gpt2, iter(ids)))
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 5  # it really streams, not one piece at the end
    # Decoding token by token would have produced replacement characters:
    assert "\ufffd" in "".join(gpt2.decode([i]) for i in ids)


def test_incremental_decoder_holds_back_partial_character(gpt2):
    ids = gpt2.encode("😀")
    decoder = IncrementalDecoder(gpt2)
    assert [decoder.add(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert decoder.add(ids[-1]) == "😀"
    assert decoder.flush() == ""


def test_unfinished_character_flushes_as_replacement(gpt2):
    ids = gpt2.encode("😀")[:-1]
    assert "".join(decode_stream(gpt2, ids)) == gpt2.decode(ids) == "\ufffd"


def test_pure_python_bpe_streams_the_same(shared_data, gpt2):
    bpe = BPETokenizer.from_gpt2(shared_data / "gpt2" / "encoder.json", shared_data / "gpt2" / "vocab.bpe")
    ids = gpt2.encode(TEXT)
    assert list(decode_stream(bpe, ids)) == list(decode_stream(gpt2, ids))


def test_word_level_tokenizer_streams(shared_data):
    tok = SimpleTokenizer.from_text((shared_data / "the-verdict.txt").read_text(encoding="utf-8"))
    ids = tok.encode("I had always thought Jack Gisburn rather a cheap genius, though.")
    pieces = list(decode_stream(tok, ids))
    assert "".join(pieces) == tok.decode(ids)
    assert pieces[:3] == ["I", " had", " always"]
