"""Our GPT-2 tokenizers must produce tiktoken's ``gpt2`` ids token for token (book 2.5).

The reference ``tiktoken.Encoding`` is built here with tiktoken's own loader and regex
(``data_gym_to_mergeable_bpe_ranks`` + ``r50k_pat_str``), not with our construction code.
"""

from __future__ import annotations

import json
import random
import time

import pytest
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from scratchllm.tokenizers import BPETokenizer, GPT2Tokenizer

EDGE_CASES = [
    "",
    " ",
    "Hello, world!",
    "I'm sure it's what they'll say, he's ' s 's  'S 'LL",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷",
    "中文字符 日本語のテキスト 한국어 텍스트",
    "tabs\tand   runs     of spaces   \n\n\n  trailing   ",
    "windows\r\nline\r\nendings\r\n",
    "control \x00\x01\x07\x1b[31m chars \x7f\x85 and nbsp\u00a0here",
    "numbers 1234567890 3.14159 -42 1e10 ١٢٣",
    "accents: café naïve Ångström ﬁ ligature e\u0301 combining",
    "code: def f(x):\n    return x**2  # comment\n",
    "      leading spaces",
    "a" * 300,
    "x" + "ab" * 3000,  # one 6 KB chunk: must not be quadratic
    "天地玄黄宇宙洪荒日月盈昃辰宿列张" * 40,  # CJK has no spaces: one long chunk
    "\u2028\u2029\u3000 unicode spaces",
]


@pytest.fixture(scope="module")
def reference(shared_data) -> tiktoken.Encoding:
    gpt2_dir = shared_data / "gpt2"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # read the local files, write no cache
        ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_dir / "vocab.bpe"), str(gpt2_dir / "encoder.json"))
    return tiktoken.Encoding(
        name="gpt2-reference", pat_str=r50k_pat_str, mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257,
    )


@pytest.fixture(scope="module")
def py_bpe(shared_data) -> BPETokenizer:
    return BPETokenizer.from_gpt2(shared_data / "gpt2" / "encoder.json", shared_data / "gpt2" / "vocab.bpe")


@pytest.fixture(scope="module")
def fast_gpt2(shared_data) -> GPT2Tokenizer:
    return GPT2Tokenizer(shared_data / "gpt2")


def _instruction_texts(shared_data) -> list[str]:
    texts: list[str] = []

    def collect(node):
        if isinstance(node, str):
            texts.append(node)
        elif isinstance(node, dict):
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    for path in sorted((shared_data / "instruction").glob("*.json")):
        collect(json.loads(path.read_text(encoding="utf-8")))
    return texts


def _random_text(rng: random.Random) -> str:
    """Random surrogate-free text mixing scripts, emoji, whitespace and control characters."""
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x300, 0x36F), (0x400, 0x4FF),
              (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x2000, 0x206F), (0xE000, 0xF8FF),
              (0x10000, 0x10FFFF)]
    out = []
    for _ in range(rng.randint(0, 60)):
        r = rng.random()
        if r < 0.15:
            out.append(rng.choice([" ", "  ", "\n", "\r\n", "\t", "'s", " 'll", "<|", "|>"]))
        else:
            lo, hi = rng.choice(ranges)
            cp = rng.randint(lo, hi)
            out.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "x")
    return "".join(out)


def test_vocab_matches(py_bpe, fast_gpt2, reference):
    assert py_bpe.vocab_size == fast_gpt2.vocab_size == reference.n_vocab == 50257
    assert py_bpe.eot_id == fast_gpt2.eot_id == reference.eot_token == 50256


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_match_tiktoken(text, py_bpe, fast_gpt2, reference):
    expected = reference.encode_ordinary(text)
    assert py_bpe.encode(text) == expected
    assert fast_gpt2.encode(text) == expected
    assert py_bpe.decode(expected) == fast_gpt2.decode(expected) == text


def test_known_ids():
    # Hand-checked against the book (2.5): "Hello, do you like tea?" in GPT-2 ids.
    tok = GPT2Tokenizer()
    assert tok.encode("Hello, do you like tea?") == [15496, 11, 466, 345, 588, 8887, 30]


def test_all_tinyshakespeare_matches_and_is_fast(shared_data, reference):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    expected = reference.encode_ordinary(text)
    start = time.perf_counter()
    fresh = BPETokenizer.from_gpt2(shared_data / "gpt2" / "encoder.json", shared_data / "gpt2" / "vocab.bpe")
    ids = fresh.encode(text)  # cold cache: every distinct chunk is merged once
    assert time.perf_counter() - start < 20.0
    assert ids == expected
    assert fresh.decode(ids) == text
    assert GPT2Tokenizer(shared_data / "gpt2").encode(text) == expected


def test_all_instruction_texts_match(shared_data, py_bpe, fast_gpt2, reference):
    texts = _instruction_texts(shared_data)
    assert len(texts) > 3000
    expected = reference.encode_ordinary_batch(texts)
    assert [py_bpe.encode_ordinary(t) for t in texts] == expected
    assert fast_gpt2.encode_batch(texts) == expected


def test_fuzz_random_unicode_matches_and_round_trips(py_bpe, fast_gpt2, reference):
    rng = random.Random(1234)
    for _ in range(1500):
        text = _random_text(rng)
        expected = reference.encode_ordinary(text)
        assert py_bpe.encode_ordinary(text) == expected, repr(text)
        assert fast_gpt2.encode_ordinary(text) == expected, repr(text)
        assert py_bpe.decode(expected) == text


def test_special_token_id_matches(py_bpe, fast_gpt2, reference):
    text = "end of one.<|endoftext|>Start of two"
    expected = reference.encode(text, allowed_special={"<|endoftext|>"})
    assert 50256 in expected
    assert py_bpe.encode(text, allowed_special={"<|endoftext|>"}) == expected
    assert fast_gpt2.encode(text, allowed_special="all") == expected
    # Plain-text mode splits the marker into ordinary pieces, exactly like tiktoken's.
    assert py_bpe.encode_ordinary(text) == fast_gpt2.encode_ordinary(text) == reference.encode_ordinary(text)
