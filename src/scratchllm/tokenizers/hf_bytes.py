"""The raw bytes behind Hugging Face token ids, so generated text can stream byte by byte.

A ``tokenizer.json`` decoder turns tokens into text in one of two byte-exact ways:

* **byte-level** (GPT-2, Llama 3, Qwen): every token is written with GPT-2's byte <-> printable
  character table (``byte_level.bytes_to_unicode``). A token with a character outside the
  table (an added token such as ``<｜end▁of▁sentence｜>`` or ``"my token"``) is kept as its
  own UTF-8, exactly as the Rust decoder does.
* **byte fallback** (Llama 2, Mistral, Gemma: SentencePiece-style): ``<0xNN>`` tokens are single
  bytes; other tokens are text whose ``▁`` means a space (``Replace`` or ``Metaspace``), and the
  first space of the whole text is dropped (``Strip`` or Metaspace's prepend scheme).

``ByteDecoder.for_decoder`` reads the decoder's JSON and returns None for any other decoder
(WordPiece, CTC, regex replacements...): those stream through decoded text instead (see
``streaming.IncrementalDecoder``). One difference is deliberate: a run of ``<0xNN>`` tokens
that is not valid UTF-8 becomes U+FFFD per *maximal invalid sequence* (Python's rule) where
the Rust ByteFallback writes one U+FFFD per byte; valid text is identical.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from scratchllm.tokenizers.byte_level import unicode_to_bytes

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPACE = b" "


class ByteDecoder:
    """Bytes of token ids, with the text-start rules kept apart so a stream applies them once."""

    def __init__(self, token_text: Callable[[int], str | None], scheme: str, *,
                 byte_tokens: bool = False,
                 replacements: tuple[tuple[str, str], ...] = (), strip_start: int = 0,
                 drop_first_marks: str | None = None) -> None:
        self._token_text = token_text
        self._scheme = scheme  # "byte_level" | "sentencepiece"
        self._byte_tokens = byte_tokens  # <0xNN> is one byte (else it is plain text)
        self._replacements = replacements  # (old, new) applied to each non-byte token
        self._strip_start = strip_start  # leading spaces dropped from the whole text
        self._drop_first_marks = drop_first_marks  # Metaspace: this char vanishes in token 0
        self._cache: dict[int, bytes] = {}

    @classmethod
    def for_decoder(cls, decoder: dict[str, Any] | None,
                    token_text: Callable[[int], str | None]) -> ByteDecoder | None:
        """A ByteDecoder for a tokenizer.json ``decoder`` entry, or None if it has no byte form."""
        if not isinstance(decoder, dict):
            return None
        steps = decoder.get("decoders") if decoder.get("type") == "Sequence" else [decoder]
        if not isinstance(steps, list) or not steps:
            return None
        kinds = [step.get("type") if isinstance(step, dict) else None for step in steps]
        if set(kinds) == {"ByteLevel"}:
            return cls(token_text, "byte_level")
        if not set(kinds) <= {"Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"}:
            return None
        replacements: list[tuple[str, str]] = []
        strip_start, drop_first = 0, None
        for step in steps:
            kind = step["type"]
            if kind == "Replace":
                pattern = step.get("pattern")
                if not (isinstance(pattern, dict) and isinstance(pattern.get("String"), str)
                        and isinstance(step.get("content"), str)):
                    return None  # a regex replacement: no fixed byte form
                replacements.append((pattern["String"], step["content"]))
            elif kind == "Strip":
                if step.get("stop") or step.get("content") != " ":
                    return None  # stripping the end of the text cannot be streamed
                strip_start += int(step.get("start") or 0)
            elif kind == "Metaspace":
                mark = step.get("replacement", "\u2581")
                scheme = step.get("prepend_scheme")
                prepends = scheme != "never" if scheme is not None else \
                    bool(step.get("add_prefix_space", True))
                if prepends:
                    drop_first = mark
                replacements.append((mark, " "))
        if "ByteFallback" not in kinds and drop_first is None and not replacements:
            return None
        return cls(token_text, "sentencepiece", byte_tokens="ByteFallback" in kinds,
                   replacements=tuple(replacements),
                   strip_start=strip_start, drop_first_marks=drop_first)

    def token_bytes(self, token_id: int) -> bytes:
        """One token's bytes as it reads in the middle of a text."""
        cached = self._cache.get(token_id)
        if cached is not None:
            return cached
        text = self._token_text(token_id) or ""
        if self._scheme == "byte_level":
            table = unicode_to_bytes()
            if all(ch in table for ch in text):
                data = bytes(table[ch] for ch in text)
            else:  # an added token written as plain text
                data = text.encode("utf-8", "replace")
        else:
            match = _BYTE_TOKEN.fullmatch(text) if self._byte_tokens else None
            if match:
                data = bytes([int(match.group(1), 16)])
            else:
                for old, new in self._replacements:
                    text = text.replace(old, new)
                data = text.encode("utf-8", "replace")
        self._cache[token_id] = data
        return data

    def continued(self, ids: list[int]) -> bytes:
        """Bytes of ids that follow earlier ones: no text-start rule applies."""
        return b"".join(map(self.token_bytes, ids))

    def start(self, ids: list[int]) -> bytes:
        """Bytes of ids that begin a text: what ``tokenizer.decode(ids)`` gives, as UTF-8."""
        if not ids:
            return b""
        head = self.continued(ids[:1])
        if self._drop_first_marks is not None:
            text = self._token_text(ids[0]) or ""
            if not (self._byte_tokens and _BYTE_TOKEN.fullmatch(text)):
                # the Rust Metaspace drops every mark of the first token
                text = text.replace(self._drop_first_marks, "")
                for old, new in self._replacements:
                    text = text.replace(old, new)
                head = text.encode("utf-8", "replace")
        data = head + self.continued(ids[1:])
        for _ in range(self._strip_start):
            if data.startswith(_SPACE):
                data = data[1:]
        return data
