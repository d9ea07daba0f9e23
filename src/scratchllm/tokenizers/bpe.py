"""Byte-level byte-pair encoding in plain Python: train, encode, decode, save (book 2.5).

The same class runs GPT-2's own vocabulary (``BPETokenizer.from_gpt2``) and vocabularies you
train yourself (``BPETokenizer.train``). Tokens are stored the way GPT-2's files write them:
each byte as one printable character (see ``byte_level``), so a saved tokenizer is readable
JSON and GPT-2's merges drop straight in. Slower than tiktoken, but every step is visible.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import regex

from scratchllm.errors import MissingFileError, TokenizerError
from scratchllm.tokenizers.base import Tokenizer, ids_to_list, without_surrogates
from scratchllm.tokenizers.bpe_train import learn_merges
from scratchllm.tokenizers.byte_level import (
    ENDOFTEXT,
    GPT2_SPLIT_PATTERN,
    bytes_to_token_str,
    bytes_to_unicode,
    find_gpt2_files,
    read_gpt2_files,
    token_str_to_bytes,
)
from scratchllm.utils.atomic import atomic_write_text

FORMAT_NAME = "scratchllm-bpe"
_CACHE_LIMIT = 200_000  # distinct chunks remembered before the encode cache is cleared


class BPETokenizer(Tokenizer):
    """Byte-level BPE: ``vocab`` maps token strings to ids, ``merges`` are ranked pairs."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Iterable[tuple[str, str]],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_SPLIT_PATTERN,
    ):
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self._special = dict(special_tokens if special_tokens is not None else {ENDOFTEXT: len(self.vocab)})
        self.pattern = pattern
        self._check()
        self._ranks = {pair: rank for rank, pair in reversed(list(enumerate(self.merges)))}
        self._byte_char = bytes_to_unicode()
        self._id_to_bytes: list[bytes] = [b""] * self.vocab_size
        for token, i in self.vocab.items():
            self._id_to_bytes[i] = token_str_to_bytes(token)
        for token, i in self._special.items():
            self._id_to_bytes[i] = token.encode("utf-8")
        try:
            self._split = regex.compile(pattern)
        except regex.error as err:
            raise TokenizerError(f"invalid pre-tokenizer pattern {pattern!r}: {err}") from None
        self._cache: dict[str, list[int]] = {}

    def _check(self) -> None:
        """Reject vocabularies that would encode wrongly or crash later."""
        if ENDOFTEXT not in self._special:
            raise TokenizerError(f"special_tokens must include {ENDOFTEXT!r} (documents are separated by it)")
        ids = sorted([*self.vocab.values(), *self._special.values()])
        if ids != list(range(len(ids))):
            raise TokenizerError(
                "token ids must be 0..N-1 with no gaps or repeats across vocab and special tokens"
            )
        missing = [c for c in bytes_to_unicode().values() if c not in self.vocab]
        if missing:
            raise TokenizerError(
                f"vocab lacks {len(missing)} of the 256 byte tokens; a byte-level BPE needs all"
            )
        for left, right in self.merges:
            if left not in self.vocab or right not in self.vocab or left + right not in self.vocab:
                raise TokenizerError(f"merge {left!r} + {right!r} uses or makes a token missing from vocab")

    # --- construction -------------------------------------------------------------------
    @classmethod
    def train(
        cls, text: str, vocab_size: int, special_tokens: Iterable[str] = (ENDOFTEXT,)
    ) -> BPETokenizer:
        """Learn ``vocab_size`` tokens (256 bytes + merges + special tokens) from ``text``."""
        special = list(dict.fromkeys(special_tokens))
        if ENDOFTEXT not in special:
            special.append(ENDOFTEXT)
        if vocab_size < 256 + len(special):
            raise TokenizerError(f"vocab_size={vocab_size} is too small: need at least 256 byte tokens "
                                 f"+ {len(special)} special tokens = {256 + len(special)}")
        base_bytes = [bytes([b]) for b in bytes_to_unicode()]  # GPT-2's byte order: ids 0..255
        byte_id = {b[0]: i for i, b in enumerate(base_bytes)}
        split = regex.compile(GPT2_SPLIT_PATTERN)
        chunk_counts: Counter[str] = Counter()
        # Special token strings separate documents; never learn merges across or inside them.
        pieces = regex.split("|".join(map(regex.escape, special)), without_surrogates(text))
        for piece in pieces:
            chunk_counts.update(split.findall(piece))
        words = ((tuple(byte_id[b] for b in chunk.encode("utf-8")), n) for chunk, n in chunk_counts.items())
        token_bytes = list(base_bytes)
        merges = learn_merges(words, token_bytes, vocab_size - 256 - len(special))
        as_str = [bytes_to_token_str(b) for b in token_bytes]
        vocab = {token: i for i, token in enumerate(as_str)}
        named = [(as_str[a], as_str[b]) for (a, b), _ in merges]
        specials = {tok: len(vocab) + k for k, tok in enumerate(special)}
        return cls(vocab, named, specials)

    @classmethod
    def from_gpt2(
        cls, encoder_json: str | Path | None = None, vocab_bpe: str | Path | None = None
    ) -> BPETokenizer:
        """GPT-2's tokenizer from its encoder.json + vocab.bpe (default: the same search as
        GPT2Tokenizer). Encodes exactly like tiktoken's ``gpt2`` encoding."""
        if encoder_json is None or vocab_bpe is None:
            found = find_gpt2_files()
            if found is None:
                raise MissingFileError("GPT-2 encoder.json / vocab.bpe not found; pass their paths "
                                       "or set $SCRATCHLLM_GPT2_DIR to the folder holding them")
            encoder_json, vocab_bpe = found
        encoder, merges = read_gpt2_files(encoder_json, vocab_bpe)
        special = {tok: encoder.pop(tok) for tok in (ENDOFTEXT,) if tok in encoder}
        if ENDOFTEXT not in special:
            special[ENDOFTEXT] = len(encoder)
        return cls(encoder, merges, special)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> BPETokenizer:
        try:
            return cls(spec["vocab"], [tuple(m) for m in spec["merges"]], spec["special_tokens"],
                       spec.get("pattern", GPT2_SPLIT_PATTERN))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, TokenizerError):
                raise
            raise TokenizerError(f"malformed BPE tokenizer spec ({type(err).__name__}: {err}); it needs "
                                 "vocab, merges and special_tokens as written by to_dict()") from err

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "bpe",
            "format": FORMAT_NAME,
            "version": 1,
            "pattern": self.pattern,
            "special_tokens": dict(self._special),
            "vocab": dict(self.vocab),
            "merges": [list(m) for m in self.merges],
        }

    def save(self, path: str | Path) -> Path:
        """Write one JSON file atomically: a crash mid-save leaves the old tokenizer intact."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"tokenizer file not found: {path}; create it with BPETokenizer.save()")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TokenizerError(
                f"cannot read tokenizer file {path}: {err}; it is corrupted, save it again"
            ) from err
        if not isinstance(spec, dict) or spec.get("format") != FORMAT_NAME:
            raise TokenizerError(f"{path} is not a scratchllm BPE tokenizer file (no format={FORMAT_NAME!r})")
        try:
            return cls.from_dict(spec)
        except TokenizerError as err:
            raise TokenizerError(f"tokenizer file {path} is invalid: {err}") from err

    # --- the Tokenizer contract ---------------------------------------------------------
    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self._special)

    def encode_ordinary(self, text: str) -> list[int]:
        """Pre-tokenize, then BPE each chunk; repeated chunks come from a cache."""
        text = without_surrogates(text)
        cache = self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        ids: list[int] = []
        for chunk in self._split.findall(text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = cache[chunk] = self._bpe(chunk)
            ids.extend(chunk_ids)
        return ids

    def _bpe(self, chunk: str) -> list[int]:
        """Merge the chunk's bytes, always applying the lowest-ranked (earliest learned) pair,
        leftmost first. A heap over a linked list of parts keeps long chunks (CJK text and
        base64 have no spaces) at O(n log n) instead of rescanning every pair per merge."""
        parts: list[str | None] = [self._byte_char[b] for b in chunk.encode("utf-8")]
        n, ranks = len(parts), self._ranks
        nxt = list(range(1, n + 1))  # index of the next live part; n = end
        prev = list(range(-1, n - 1))
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get((parts[i], parts[i + 1]))) is not None]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            if parts[i] is None or j == n or ranks.get((parts[i], parts[j])) != rank:
                continue  # stale entry: one side was merged away since it was pushed
            parts[i], parts[j] = parts[i] + parts[j], None
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prev[nxt[i]] = i
            for left, right in ((prev[i], i), (i, nxt[i])):
                if left >= 0 and right < n and (r := ranks.get((parts[left], parts[right]))) is not None:
                    heapq.heappush(heap, (r, left))
        vocab = self.vocab
        return [vocab[p] for p in parts if p is not None]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes of ``ids``; a prefix of a sequence may end inside a UTF-8 character."""
        ids = ids_to_list(ids)
        try:
            if min(ids, default=0) < 0:
                raise IndexError
            return b"".join([self._id_to_bytes[i] for i in ids])
        except (IndexError, TypeError):
            bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size]
            raise TokenizerError(
                f"token ids {bad[:5]} are not in this vocabulary (0..{self.vocab_size - 1})"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; invalid UTF-8 (a partial character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
