"""SimpleTokenizer against the book's published numbers on the-verdict.txt (book 2.3-2.4)."""

from __future__ import annotations

import pytest

from scratchllm.errors import TokenizerError
from scratchllm.tokenizers import SimpleTokenizer, tokenizer_from_dict

BOOK_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace."
BOOK_IDS = [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]


@pytest.fixture(scope="module")
def verdict_tok(shared_data):
    return SimpleTokenizer.from_text((shared_data / "the-verdict.txt").read_text(encoding="utf-8"))


def test_vocab_size_matches_book(verdict_tok):
    # Book 2.4: 1,130 distinct words/punctuation + <|endoftext|> + <|unk|>.
    assert verdict_tok.vocab_size == 1132
    assert verdict_tok.eot_id == 1130
    assert verdict_tok.special_tokens == {"<|endoftext|>": 1130, "<|unk|>": 1131}


def test_book_example_ids_and_decode(verdict_tok):
    ids = verdict_tok.encode(BOOK_TEXT, allowed_special={"<|endoftext|>"})
    assert ids == BOOK_IDS
    assert verdict_tok.decode(ids) == (
        "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>."
    )


def test_book_v1_round_trip_on_known_words(verdict_tok):
    # Book 2.3: text made of vocabulary words decodes back exactly.
    text = '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    ids = verdict_tok.encode(text)
    assert ids == [1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108, 754, 793, 7]
    assert verdict_tok.decode(ids) == '" It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'


def test_special_token_refused_by_default(verdict_tok):
    with pytest.raises(TokenizerError, match=r"<\|endoftext\|>.*allowed_special"):
        verdict_tok.encode(BOOK_TEXT)
    # encode_ordinary treats it as an (unknown) word, never as the control token.
    assert 1130 not in verdict_tok.encode_ordinary(BOOK_TEXT)


def test_special_token_without_spaces_is_split_out(verdict_tok):
    ids = verdict_tok.encode("tea.<|endoftext|>The", allowed_special="all")
    assert ids == [975, 7, 1130, 93]  # "tea" ".", <|endoftext|>, "The"
    assert verdict_tok.decode(ids).endswith(". <|endoftext|> The")


def test_from_dict_round_trip(verdict_tok):
    clone = tokenizer_from_dict(verdict_tok.to_dict())
    assert clone.id_to_str == verdict_tok.id_to_str
    assert clone.encode(BOOK_TEXT, allowed_special="all") == BOOK_IDS


def test_bad_input_errors(verdict_tok):
    with pytest.raises(TokenizerError, match="outside this vocabulary"):
        verdict_tok.decode([0, 5000])
    with pytest.raises(TokenizerError, match="at least one word"):
        SimpleTokenizer.from_text("   ")
