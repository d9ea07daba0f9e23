"""Turning token ids into text one token at a time, for streaming generation.

A byte-level token can end in the middle of a UTF-8 character (an emoji is often 2-3 tokens),
so decoding each token on its own prints U+FFFD garbage. ``IncrementalDecoder`` holds back the
incomplete bytes and only emits whole characters; joining everything it emits equals
``tokenizer.decode(all_ids)``.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator

from scratchllm.tokenizers.base import Tokenizer, ids_to_list


class IncrementalDecoder:
    """Feed ids with ``add``; get back only the new, complete text. Call ``flush`` at the end."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._bytes_of = getattr(tokenizer, "decode_bytes", None)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []  # only used by tokenizers without decode_bytes
        self._emitted = 0

    def add(self, ids: int | Iterable[int]) -> str:
        """Text completed by these ids (may be "" while a character is still unfinished)."""
        new = [ids] if isinstance(ids, int) else ids_to_list(ids)
        if self._bytes_of is not None:
            return self._utf8.decode(self._bytes_of(new))
        # Tokenizers without raw bytes (SimpleTokenizer, HFTokenizer): the decoded prefix only
        # grows at its end, except that trailing U+FFFD may be a character still arriving in
        # the next byte-level token (CJK from a Hugging Face tokenizer), so it is held back.
        self._ids.extend(new)
        text = self.tokenizer.decode(self._ids)
        stable = max(len(text.rstrip("\ufffd")), self._emitted)
        piece, self._emitted = text[self._emitted : stable], stable
        return piece

    def flush(self) -> str:
        """Whatever is left (an unfinished character becomes U+FFFD, like ``decode``)."""
        if self._bytes_of is not None:
            return self._utf8.decode(b"", final=True)
        piece = self.tokenizer.decode(self._ids)[self._emitted :] if self._ids else ""
        self._emitted += len(piece)
        return piece


def decode_stream(tokenizer: Tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """Yield non-empty text pieces as ``ids`` arrive (``ids`` may be a generator)."""
    decoder = IncrementalDecoder(tokenizer)
    for token_id in ids:
        piece = decoder.add(int(token_id))
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail
