"""The book's first tokenizer: whole words and punctuation over a fixed vocabulary (book 2.2-2.4).

It shows the idea of a vocabulary and why it fails: a word not in the training text becomes
``<|unk|>`` and the original text cannot be recovered. That is what byte-pair encoding fixes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from scratchllm.errors import TokenizerError
from scratchllm.tokenizers.base import Tokenizer, ids_to_list

# Split on punctuation, the double dash and whitespace, keeping the separators (book 2.2).
_SPLIT = re.compile(r'([,.:;?_!"()\']|--|\s)')
# decode() joins tokens with spaces, then removes the space in front of punctuation.
_SPACE_BEFORE_PUNCT = re.compile(r'\s+([,.:;?!"()\'])')

ENDOFTEXT, UNK = "<|endoftext|>", "<|unk|>"


def split_words(text: str) -> list[str]:
    """The book's word splitter: punctuation marks become their own tokens, spaces vanish."""
    return [piece.strip() for piece in _SPLIT.split(text) if piece.strip()]


class SimpleTokenizer(Tokenizer):
    """Word-level tokenizer; ids are positions in the sorted vocabulary (book 2.3), followed by
    ``<|endoftext|>`` and ``<|unk|>`` (book 2.4)."""

    def __init__(self, words: Iterable[str]):
        vocab = sorted(set(words) - {ENDOFTEXT, UNK})
        if not vocab:
            raise TokenizerError("SimpleTokenizer needs at least one word; build it from non-empty text")
        self.id_to_str: list[str] = [*vocab, ENDOFTEXT, UNK]
        self.str_to_id: dict[str, int] = {s: i for i, s in enumerate(self.id_to_str)}
        self._special = {ENDOFTEXT: len(vocab), UNK: len(vocab) + 1}

    @classmethod
    def from_text(cls, text: str) -> SimpleTokenizer:
        """Vocabulary = every distinct word and punctuation mark of ``text``."""
        words = [w for part in text.split(ENDOFTEXT) for w in split_words(part.replace(UNK, " "))]
        return cls(words)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> SimpleTokenizer:
        return cls(spec["vocab"])

    def to_dict(self) -> dict[str, Any]:
        return {"type": "simple", "vocab": self.id_to_str[: -len(self._special)]}

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_str)

    def encode_ordinary(self, text: str) -> list[int]:
        """Unknown words map to ``<|unk|>`` (book 2.4); so do special token strings here."""
        unk = self._special[UNK]
        return [self.str_to_id.get(w, unk) if w not in self._special else unk for w in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = ids_to_list(ids)
        bad = [i for i in ids if not 0 <= i < len(self.id_to_str)]
        if bad:
            raise TokenizerError(
                f"token ids {bad[:5]} are outside this vocabulary (0..{len(self.id_to_str) - 1})"
            )
        return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(self.id_to_str[i] for i in ids))
