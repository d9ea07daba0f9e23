"""Turning token ids into text one token at a time, for streaming generation.

A byte-level token can end in the middle of a UTF-8 character (an emoji is often 2-3 tokens),
so decoding each token on its own prints U+FFFD garbage. ``IncrementalDecoder`` holds back the
incomplete bytes and only emits whole characters; joining everything it emits equals
``tokenizer.decode(all_ids)``.

Every step costs time in proportion to the new tokens only, never the whole text so far:

* tokenizers with raw bytes (``decode_bytes``: GPT-2, our BPE, Hugging Face byte-level and
  ``<0xNN>`` byte-fallback tokenizers) feed each token's bytes to an incremental UTF-8 decoder;
* the others (word-level, WordPiece...) decode a short window: the tokens of the last piece
  emitted plus the new ones, and emit what the new ones added to that window's text. The
  window restarts after each emitted piece, so it stays a few tokens long.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator

from scratchllm.tokenizers.base import Tokenizer, ids_to_list

_UNFINISHED = "\ufffd"  # what a decoder writes for a character whose bytes are still arriving


class IncrementalDecoder:
    """Feed ids with ``add``; get back only the new, complete text. Call ``flush`` at the end."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._bytes_of = getattr(tokenizer, "decode_bytes", None)
        if not getattr(tokenizer, "has_byte_decoding", True):
            self._bytes_of = None
        # Hugging Face SentencePiece-style tokenizers drop the text's first space: only the
        # first call may do that, later ones continue the text.
        self._bytes_after = getattr(tokenizer, "decode_bytes_continued", self._bytes_of)
        self._started = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Window of the text path: ids[:_read] were emitted, ids[:_window] are context only.
        self._ids: list[int] = []
        self._window = 0
        self._read = 0

    def add(self, ids: int | Iterable[int]) -> str:
        """Text completed by these ids (may be "" while a character is still unfinished)."""
        new = [ids] if isinstance(ids, int) else ids_to_list(ids)
        if not new:
            return ""
        if self._bytes_of is not None:
            data = self._bytes_after(new) if self._started else self._bytes_of(new)
            self._started = True
            return self._utf8.decode(data)
        self._ids.extend(new)
        before = self.tokenizer.decode(self._ids[self._window:self._read])
        after = self.tokenizer.decode(self._ids[self._window:])
        if len(after) <= len(before) or after.endswith(_UNFINISHED):
            return ""  # nothing new yet, or a character still arriving in the next token
        self._window, self._read = self._read, len(self._ids)
        if self._window > 4096:  # forget ids no window will look at again
            del self._ids[:self._window]
            self._read -= self._window
            self._window = 0
        return after[len(before):]

    def flush(self) -> str:
        """Whatever is left (an unfinished character becomes U+FFFD, like ``decode``)."""
        if self._bytes_of is not None:
            return self._utf8.decode(b"", final=True)
        if self._read == len(self._ids):
            return ""
        before = self.tokenizer.decode(self._ids[self._window:self._read])
        after = self.tokenizer.decode(self._ids[self._window:])
        self._window = self._read = len(self._ids)
        return after[len(before):]


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
