"""Streaming Hugging Face tokenizers on raw bytes: whole characters, linear time, == decode."""

from __future__ import annotations

import time

import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from scratchllm.tokenizers import IncrementalDecoder, SimpleTokenizer, decode_stream
from scratchllm.tokenizers.hf import HFTokenizer

TEXT = "Streaming 😀 emoji, 中文 and café.\nNext 👨‍👩‍👧 line, 你好世界!"
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<｜end▁of▁sentence｜>"]


@pytest.fixture(scope="module")
def byte_level() -> HFTokenizer:
    """Llama 3 / Qwen style: byte-level BPE, too small to have whole emoji or CJK tokens, with
    special tokens and plain added tokens (one of them not writable in the byte alphabet)."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["Streaming emoji and text, next line."] * 10, trainer)
    backend.add_tokens(["my token", "ĠĠx"])
    return HFTokenizer(backend)


def _sentencepiece(decoder, normalizer=None, pre_tokenizer=None) -> HFTokenizer:
    """Llama 2 / Mistral style: ▁ for spaces, characters outside the vocabulary as <0xNN>."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", "H", "e", "l", "o", "w", "r", "d", "a", "n", ",", "▁H", "ll", "▁w",
                  "or", "ld", "▁wor", "▁world", "▁a", "▁an", "n", "d", "▁and"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "H"), ("l", "l"), ("▁", "w"), ("o", "r"), ("▁w", "or"), ("l", "d"),
              ("▁wor", "ld"), ("▁", "a"), ("▁a", "n"), ("▁an", "d")]
    backend = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token="<unk>",
                                              byte_fallback=True))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoder
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    return HFTokenizer(backend)


SP_TEXT = "Hello world, 你好 and 😀 wor ld  and"


@pytest.fixture(scope="module", params=["strip", "metaspace"])
def sentencepiece(request) -> HFTokenizer:
    if request.param == "strip":  # Llama 2's tokenizer.json
        return _sentencepiece(
            decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                               decoders.Fuse(), decoders.Strip(" ", 1, 0)]),
            normalizer=normalizers.Sequence([normalizers.Prepend("▁"),
                                             normalizers.Replace(" ", "▁")]))
    return _sentencepiece(  # newer files: Metaspace, which drops the first token's ▁
        decoders.Sequence([decoders.Metaspace(prepend_scheme="first"), decoders.ByteFallback(),
                           decoders.Fuse()]),
        pre_tokenizer=pre_tokenizers.Metaspace(prepend_scheme="first"))


def _check_stream(tok: HFTokenizer, ids: list[int]) -> list[str]:
    pieces = list(decode_stream(tok, ids))
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)
    assert tok.decode_bytes(ids).decode("utf-8") == tok.decode(ids)
    return pieces


def test_byte_level_streams_split_characters_whole(byte_level):
    special = byte_level.special_tokens
    ids = ([special["<|begin_of_text|>"]] + byte_level.encode(TEXT)
           + byte_level.encode("my token ĠĠx", allowed_special="all")
           + [special["<｜end▁of▁sentence｜>"], special["<|eot_id|>"]])
    assert len(ids) > 2 * len(TEXT.split())  # characters really span several tokens
    assert any("\ufffd" in byte_level.decode([i]) for i in ids)
    pieces = _check_stream(byte_level, ids)
    assert len(pieces) > 10
    assert "".join(pieces).startswith("<|begin_of_text|>Streaming 😀")
    assert "".join(pieces).endswith("my token   x<｜end▁of▁sentence｜><|eot_id|>")


def test_sentencepiece_byte_fallback_streams_like_decode(sentencepiece):
    ids = sentencepiece.encode(SP_TEXT)
    byte_tokens = [i for i in ids if 3 <= i < 259]
    assert len(byte_tokens) >= 10  # CJK and the emoji arrive one <0xNN> byte at a time
    assert sentencepiece.decode(ids) == SP_TEXT  # the first ▁ dropped, the others spaces
    _check_stream(sentencepiece, ids)
    _check_stream(sentencepiece, [1] + ids + [2])  # <s> ... </s>
    # A stream that starts in the middle of a word decodes exactly as decode() does too.
    _check_stream(sentencepiece, ids[3:])


def test_streaming_never_decodes_the_whole_prefix(byte_level, monkeypatch):
    """5,000 tokens: no decode() call at all (bytes only), and the time per token does not
    grow with the text: the second half streams about as fast as the first."""
    ids = byte_level.encode(TEXT * 160)[:5000]
    expected = byte_level.decode(ids)
    calls = []
    monkeypatch.setattr(byte_level, "decode", lambda i: calls.append(i) or "")
    decoder = IncrementalDecoder(byte_level)
    halves = []
    for half in (ids[:2500], ids[2500:]):
        start = time.perf_counter()
        text = "".join(decoder.add(i) for i in half)
        halves.append((time.perf_counter() - start, text))
    assert calls == []
    assert halves[0][1] + halves[1][1] + decoder.flush() == expected
    assert halves[1][0] < 3 * halves[0][0] + 0.05


def test_tokenizers_without_bytes_decode_short_windows(monkeypatch):
    """A decoder with no byte form (WordPiece here, word-level SimpleTokenizer) streams through
    text, but each decode() sees a few tokens, not the whole text so far."""
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "##s": 3, ",": 4, "wor": 5, "##ld": 6}
    backend = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    wordpiece = HFTokenizer(backend)
    assert not wordpiece.has_byte_decoding
    simple = SimpleTokenizer(["I", "had", "always", "thought", ",", "."])
    for tok, text in [(wordpiece, "hello worlds, wor hello, world"),
                      (simple, "I had always thought, I had.")]:
        ids = tok.encode(text) * 300
        widths = []
        real = tok.decode
        monkeypatch.setattr(tok, "decode", lambda i, real=real: widths.append(len(i)) or real(i))
        pieces = list(decode_stream(tok, ids))
        monkeypatch.undo()
        assert "".join(pieces) == tok.decode(ids)
        assert len(pieces) > len(ids) // 2 and max(widths) <= 3
