"""BPE training: the fast incremental learner must equal a naive recount-everything version."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from scratchllm.errors import TokenizerError
from scratchllm.tokenizers import BPETokenizer
from scratchllm.tokenizers.bpe_train import learn_merges, merge_pair


def naive_merges(words: dict[tuple[int, ...], int], token_bytes: list[bytes], num_new: int):
    """Textbook BPE: recount all pairs after each merge; same tie-break (smallest ids)."""
    words = dict(words)
    token_bytes = list(token_bytes)
    merges = []
    while len(token_bytes) - 256 < num_new:
        counts: Counter = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += n
        if not counts:
            break
        top = max(counts.values())
        if top < 2:
            break
        best = min(p for p, c in counts.items() if c == top)
        merged = token_bytes[best[0]] + token_bytes[best[1]]
        if merged in token_bytes:
            new_id = token_bytes.index(merged)
        else:
            new_id = len(token_bytes)
            token_bytes.append(merged)
        merges.append((best, new_id))
        new_words: Counter = Counter()
        for word, n in words.items():
            new_words[merge_pair(word, best, new_id)] += n
        words = dict(new_words)
    return merges


def test_merge_pair_is_left_to_right_and_non_overlapping():
    assert merge_pair((1, 1, 1), (1, 1), 9) == (9, 1)
    assert merge_pair((1, 1, 1, 1), (1, 1), 9) == (9, 9)
    assert merge_pair((2, 1, 3, 1, 3), (1, 3), 7) == (2, 7, 7)
    assert merge_pair((), (1, 3), 7) == ()


def test_hand_computed_example():
    # "aaabdaaabac" (Wikipedia's BPE example) as one word of byte ids 0..255.
    word = tuple(b"aaabdaaabac")
    token_bytes = [bytes([b]) for b in range(256)]
    merges = learn_merges([(word, 1)], token_bytes, 3)
    a, b = ord("a"), ord("b")
    # "aa" occurs 4 times (overlapping) and wins. The word is then aa a b d aa a b a c, with
    # pair counts aa|a:2, a|b:2, others 1 -> tie at 2; smallest ids win: (a, b) < (256, a).
    # Then aa ab d aa ab a c: aa|ab:2 wins.
    assert merges[0] == ((a, a), 256)
    assert merges[1] == ((a, b), 257)
    assert merges[2] == ((256, 257), 258)
    assert token_bytes[256:] == [b"aa", b"ab", b"aaab"]


def test_fast_learner_equals_naive_on_real_text(shared_data):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")[:6000]
    words = Counter(tuple(w.encode("utf-8")) for w in text.split(" "))
    base = [bytes([b]) for b in range(256)]
    fast = learn_merges(list(words.items()), list(base), 150)
    assert fast == naive_merges(words, base, 150)


def test_train_verdict_to_1000_tokens(shared_data):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    start = time.perf_counter()
    tok = BPETokenizer.train(text, vocab_size=1000)
    assert time.perf_counter() - start < 10.0
    assert tok.vocab_size == 1000 and tok.eot_id == 999
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")) / 2.5  # real compression
    # Frequent words become single tokens; " the" is the corpus's most common word.
    assert tok.encode(" the") == [tok.vocab["Ġthe"]]
    # Deterministic: same input, same merges.
    assert BPETokenizer.train(text, vocab_size=1000).merges == tok.merges


def test_train_keeps_special_tokens_whole():
    text = "hello world<|endoftext|>hello there<|endoftext|>" * 20
    tok = BPETokenizer.train(text, vocab_size=300, special_tokens=("<|endoftext|>", "<|pad|>"))
    assert tok.special_tokens == {"<|endoftext|>": tok.vocab_size - 2, "<|pad|>": tok.vocab_size - 1}
    assert not any("<|" in t or "|>" in t for t in tok.vocab if len(t) > 1)  # no merges across markers
    ids = tok.encode(text, allowed_special="all")
    assert ids.count(tok.eot_id) == 40
    assert tok.decode(ids) == text


def test_train_stops_when_no_pair_repeats():
    tok = BPETokenizer.train("abc", vocab_size=1000)
    assert tok.merges == [] and tok.vocab_size == 257


def test_train_rejects_tiny_vocab():
    with pytest.raises(TokenizerError, match="too small"):
        BPETokenizer.train("some text", vocab_size=200)
