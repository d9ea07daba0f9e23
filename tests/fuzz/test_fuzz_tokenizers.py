"""Every tokenizer round-trips arbitrary Unicode and keeps the special-token contract (book 2.4-2.5).

Byte-level tokenizers (our BPE, trained and GPT-2's; tiktoken's GPT-2; a Hugging Face
tokenizer.json) have no unknown text: ``decode(encode(text)) == text`` for any text without
lone surrogates, which every one of them turns into U+FFFD the way tiktoken does. The
word-level SimpleTokenizer only promises a round trip for text made of its vocabulary, up to
how it normalises whitespace (book 2.3).
"""

from __future__ import annotations

import re

import pytest
import tokenizers
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from scratchllm.errors import TokenizerError
from scratchllm.tokenizers import (
    BPETokenizer,
    GPT2Tokenizer,
    SimpleTokenizer,
    decode_stream,
)
from scratchllm.tokenizers.hf import HFTokenizer

EOT = "<|endoftext|>"
EXTRA_SPECIAL = "<|im_start|>"
# Pieces random text rarely produces on its own: multi-code-point emoji, CJK, combining marks,
# Windows newlines, NUL, the BOM, the last code point, GPT-2's contractions, halves of a
# special token string.
FRAGMENTS = ["🙂", "👩‍👩‍👧", "🇫🇷", "你好", "世界", "한국어", "é", "e\u0301", "\u0301\u0301",
             "\r\n", "\r", "\x00", " ", "  ", "\t", "\n\n", "'s", "'ll", "\u200b", "\ufeff",
             "\U0010ffff", "\u3000", "١٢٣", "ﷺ", "<|", "|>", "endoftext", "im_start", "Ġ", "Ċ"]
CORPUS = ("Hello world! The quick brown fox jumps over the lazy dog. Ünïcödé 你好世界 🙂🙃 "
          "e\u0301 \r\n\x00 tabs\tand  spaces, it's 2024. ") * 30

no_surrogates = st.characters(exclude_categories=("Cs",))
any_text = st.one_of(
    st.text(no_surrogates),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(no_surrogates, max_size=4)),
             max_size=24).map("".join),
)


def _no_special(text: str) -> bool:
    return EOT not in text and EXTRA_SPECIAL not in text


plain_text = any_text.filter(_no_special)


# ---------------------------------------------------------------------------- tokenizers
@pytest.fixture(scope="module")
def trained_bpe() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, vocab_size=320, special_tokens=[EOT, EXTRA_SPECIAL])


@pytest.fixture(scope="module")
def gpt2_bpe() -> BPETokenizer:
    return BPETokenizer.from_gpt2()


@pytest.fixture(scope="module")
def gpt2_tiktoken() -> GPT2Tokenizer:
    return GPT2Tokenizer()


@pytest.fixture(scope="module")
def hf_bpe(tmp_path_factory) -> HFTokenizer:
    """A byte-level BPE trained by the `tokenizers` library, loaded back from tokenizer.json."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOT, EXTRA_SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator([CORPUS], trainer)
    directory = tmp_path_factory.mktemp("hf_fuzz_tok")
    backend.save(str(directory / "tokenizer.json"))
    return HFTokenizer.from_dir(directory)


BYTE_LEVEL = ["trained_bpe", "gpt2_bpe", "gpt2_tiktoken", "hf_bpe"]


@pytest.fixture(scope="module", params=BYTE_LEVEL)
def tok(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------- round trips
@given(text=plain_text)
@example(text="")
@example(text="\x00\r\n\u0301🙂👩‍👩‍👧 你好")
@example(text="<|endoftext|")  # a special token string cut short is ordinary text
def test_byte_level_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode_ordinary(text) == ids
    assert not set(ids) & set(tok.special_tokens.values())


@settings(max_examples=50)
@given(corpus=any_text, vocab_extra=st.integers(1, 60), text=plain_text)
@example(corpus="aaaa" * 10 + EOT + "aaaa", vocab_extra=20, text="aaaaaaa")
@example(corpus="e\u0301" * 30, vocab_extra=5, text="e\u0301e")
def test_bpe_trained_on_any_text_round_trips_any_text(corpus, vocab_extra, text):
    """Training on arbitrary text (special token strings inside, merges that rebuild an
    existing token) still gives a tokenizer that round-trips arbitrary text."""
    tok = BPETokenizer.train(corpus, vocab_size=256 + 1 + vocab_extra)
    assert tok.vocab_size <= 256 + 1 + vocab_extra
    assert tok.decode(tok.encode(text)) == text
    assert BPETokenizer.from_dict(tok.to_dict()).encode(text) == tok.encode(text)


@given(text=any_text)
@example(text=EOT + EOT)
def test_encode_ordinary_reads_special_strings_as_text(tok, text):
    ids = tok.encode_ordinary(text)
    assert tok.decode(ids) == text
    assert not set(ids) & set(tok.special_tokens.values())


surrogate_text = st.lists(
    st.one_of(st.characters(categories=("Cs",)), st.text(no_surrogates, max_size=3)),
    min_size=1, max_size=12).map("".join)


def _replace_surrogates(text: str) -> str:
    """tiktoken's rule, by hand: a high+low surrogate pair is its character, others U+FFFD."""
    out, i = [], 0
    while i < len(text):
        code = ord(text[i])
        low = ord(text[i + 1]) if i + 1 < len(text) else 0
        if 0xD800 <= code < 0xDC00 and 0xDC00 <= low < 0xE000:
            out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
            i += 2
            continue
        out.append("\ufffd" if 0xD800 <= code < 0xE000 else text[i])
        i += 1
    return "".join(out)


@given(text=surrogate_text)
@example(text="a\ud800b")  # HFTokenizer used to raise the Rust binding's TypeError here
@example(text="\ud83d\ude42")  # a high+low pair is one character (🙂), as in tiktoken
@example(text="\ude42\ud83d")  # the wrong order is two lone surrogates
def test_lone_surrogates_become_replacement_characters(tok, text):
    """Unencodable code points become U+FFFD in every tokenizer (tiktoken's rule), not a crash."""
    assert tok.decode(tok.encode(text)) == _replace_surrogates(text)


@given(text=plain_text)
def test_bpe_from_gpt2_matches_tiktoken(gpt2_bpe, gpt2_tiktoken, text):
    """Our pure-Python BPE with GPT-2's files encodes exactly like tiktoken's Rust core."""
    assert gpt2_bpe.encode(text) == gpt2_tiktoken.encode(text)


ids_strategy = st.lists(st.integers(0, 319), max_size=30)


@settings(max_examples=50)
@given(ids=ids_strategy, text=plain_text)
def test_streamed_pieces_join_to_decode(tok, ids, text):
    """Any id sequence, even one ending inside a UTF-8 character, streams to ``decode``'s text,
    and no streamed piece of real text holds a U+FFFD that the whole text does not."""
    assert "".join(decode_stream(tok, ids)) == tok.decode(ids)
    pieces = list(decode_stream(tok, tok.encode(text)))
    assert "".join(pieces) == text
    assert all("\ufffd" in text or "\ufffd" not in piece for piece in pieces)


def test_streaming_hf_tokenizer_does_not_split_characters(hf_bpe):
    """An HFTokenizer has no raw bytes: CJK split over byte tokens used to stream as U+FFFD."""
    ids = hf_bpe.encode("hi 🙂 there 你好")
    assert len(ids) > len("hi 🙂 there 你好".split())  # the characters do span several tokens
    assert "".join(decode_stream(hf_bpe, ids)) == "hi 🙂 there 你好"


# ---------------------------------------------------------------------------- special tokens
@given(before=plain_text, after=plain_text, data=st.data())
def test_special_tokens_refused_unless_allowed(tok, before, after, data):
    special = data.draw(st.sampled_from(sorted(tok.special_tokens)), label="special")
    special_id = tok.special_tokens[special]
    text = before + special + after
    with pytest.raises(TokenizerError, match="allowed_special"):
        tok.encode(text)
    expected = tok.encode_ordinary(before) + [special_id] + tok.encode_ordinary(after)
    assert tok.encode(text, allowed_special="all") == expected
    assert tok.encode(text, allowed_special={special}) == expected
    assert tok.decode(expected) == text
    others = set(tok.special_tokens) - {special}
    if others:  # allowing only another special token still refuses this one
        with pytest.raises(TokenizerError, match=repr(special)):
            tok.encode(text, allowed_special=others)


# ---------------------------------------------------------------------------- SimpleTokenizer
SIMPLE_CORPUS = ('"It\'s the last he painted, you know," Mrs. Gisburn said -- with pardonable '
                 "pride: (a) sketch; b? yes! don't_go 你好")


@pytest.fixture(scope="module")
def simple() -> SimpleTokenizer:
    return SimpleTokenizer.from_text(SIMPLE_CORPUS)


# decode() glues these to the previous token; every other token gets one space before it.
ATTACHED = set(',.:;?!"()\'')
whitespace = st.lists(st.sampled_from([" ", "  ", "\t", "\n", "\r\n", "\u3000", "\xa0"]),
                      min_size=1, max_size=3).map("".join)


def _canonical(words: list[str]) -> str:
    """The text SimpleTokenizer.decode writes for ``words``, spelled out independently."""
    out = ""
    for i, word in enumerate(words):
        out += word if i == 0 or word in ATTACHED else " " + word
    return out


@given(data=st.data())
def test_simple_round_trips_known_words_up_to_whitespace(simple, data):
    vocabulary = simple.id_to_str[: -len(simple.special_tokens)]
    words = data.draw(st.lists(st.sampled_from(vocabulary), max_size=15), label="words")
    gaps = data.draw(st.lists(whitespace, min_size=len(words), max_size=len(words)),
                     label="gaps")
    spaced = "".join(gap + word for gap, word in zip(gaps, words))  # any whitespace between
    ids = simple.encode(spaced)
    assert ids == [vocabulary.index(w) for w in words]  # no <|unk|>, one id per word
    canonical = _canonical(words)
    assert simple.decode(ids) == canonical
    assert simple.encode(canonical) == ids


@given(text=any_text.filter(lambda t: EOT not in t and "<|unk|>" not in t))
def test_simple_maps_unknown_words_to_unk(simple, text):
    """Arbitrary text never crashes: known words keep their ids, everything else is <|unk|>."""
    ids = simple.encode(text)
    unk = simple.special_tokens["<|unk|>"]
    vocabulary = set(simple.id_to_str[: -len(simple.special_tokens)])
    # The book's splitter: punctuation and "--" are tokens, whitespace separates.
    pieces = [p.strip() for p in re.split(r'([,.:;?_!"()\']|--|\s)', text) if p.strip()]
    assert ids == [simple.str_to_id[p] if p in vocabulary else unk for p in pieces]
    simple.decode(ids)  # every id it produced decodes


@given(before=st.sampled_from(["", "Mrs. Gisburn", "you know,"]),
       after=st.sampled_from(["", " said", "pride."]),
       special=st.sampled_from([EOT, "<|unk|>"]))
def test_simple_refuses_special_strings_unless_allowed(simple, before, after, special):
    text = f"{before} {special} {after}"
    with pytest.raises(TokenizerError, match="allowed_special"):
        simple.encode(text)
    ids = simple.encode(text, allowed_special="all")
    assert ids == simple.encode(before) + [simple.special_tokens[special]] + simple.encode(after)
