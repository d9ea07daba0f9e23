"""Cutting files into pieces must tile them exactly and must not change GPT-2 tokens."""

from __future__ import annotations

import random

import pytest
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from scratchllm.data.chunking import read_piece, split_file
from scratchllm.errors import DataError


@pytest.fixture(scope="module")
def reference(shared_data) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding built from the shared vocab files (independent of our code)."""
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(shared_data / "gpt2" / "vocab.bpe"),
        encoder_json_file=str(shared_data / "gpt2" / "encoder.json"),
    )
    return tiktoken.Encoding("gpt2-reference", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def _pieces_text(path, chunk_bytes):
    size = path.stat().st_size
    return [read_piece(p, chunk_bytes) for p in split_file(path, 0, size, chunk_bytes)]


def _check_tiling(path, text, chunk_bytes, reference):
    parts = _pieces_text(path, chunk_bytes)
    assert "".join(parts) == text
    tokens = [t for p in parts for t in reference.encode_ordinary(p)]
    assert tokens == reference.encode_ordinary(text)
    return parts


def test_tinyshakespeare_pieces_tokenize_like_whole_file(shared_data, reference):
    path = shared_data / "tinyshakespeare.txt"
    text = path.read_text(encoding="utf-8")
    parts = _check_tiling(path, text, 16384, reference)
    assert 60 <= len(parts) <= 70  # 1115394 / 16384 = 68.1 nominal pieces
    assert sum(1 for p in parts if p) > 50  # cuts really happen, pieces are not all empty


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 500])
def test_awkward_text_pieces_tokenize_like_whole(tmp_path, reference, newline, chunk_bytes):
    rng = random.Random(chunk_bytes)
    words = ["word", "  spaced", "\t", "", "It's", "café", "日本語", "x", "  ", "42", "!", "<|endoftext|>"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 6))) for _ in range(300)]
    text = newline.join(lines) + newline
    path = tmp_path / "awkward.txt"
    path.write_bytes(text.encode("utf-8"))
    _check_tiling(path, text, chunk_bytes, reference)


def test_one_long_line_falls_back_to_a_single_piece(tmp_path):
    text = "no newline here " * 100
    path = tmp_path / "line.txt"
    path.write_text(text)
    parts = _pieces_text(path, 50)
    assert "".join(parts) == text and parts[0] == text


def test_bad_byte_offset_is_absolute_in_later_pieces(tmp_path):
    data = b"".join(b"line %d\n" % i for i in range(200))
    bad_at = len(data) - 20
    data = data[:bad_at] + b"\xff" + data[bad_at + 1 :]
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    pieces = split_file(path, 0, len(data), 100)
    with pytest.raises(DataError, match=f"byte offset {bad_at} "):
        for piece in pieces:
            read_piece(piece, 100)
