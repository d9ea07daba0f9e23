"""When a generated sequence is finished: an end-of-text token or a stop string (book 5.3).

The book's ``generate`` stops at ``eos_id`` without keeping it; we do the same. A stop string
is looked for in the decoded *new* text only (not the prompt), and the token that completes
it is kept, so the text of the returned tokens ends with (or just after) the stop string.
A token boundary rarely falls exactly at the stop string, so cutting the text there is a
separate step: ``cut_at_stop_strings`` does it on streamed text (the CLI's ``--stop``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import NamedTuple

from scratchllm.errors import ConfigError
from scratchllm.tokenizers.streaming import IncrementalDecoder


class Step(NamedTuple):
    keep: bool  # append this token to the output
    stop: bool  # the sequence is finished after this token
    text: str  # complete new characters this token added ("" without a tokenizer)


def normalize_stop_strings(stop_strings: str | Sequence[str] | None,
                           tokenizer: object | None) -> list[str]:
    """Turn ``stop_strings`` into a list of non-empty strings and check a tokenizer was given."""
    if stop_strings is None:
        return []
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    strings = list(stop_strings)
    if not all(isinstance(s, str) and s for s in strings):
        raise ConfigError(f"stop_strings must be non-empty strings, got {strings!r}")
    if strings and tokenizer is None:
        raise ConfigError(
            "stop_strings need a tokenizer to decode the generated tokens; pass tokenizer=..."
        )
    return strings


class StopState:
    """Tracks one sequence: feed each new token to ``step`` and obey what it returns."""

    def __init__(self, eos_ids: Collection[int] = (), stop_strings: Sequence[str] = (),
                 tokenizer: object | None = None) -> None:
        self.eos_ids = frozenset(eos_ids)
        self.stop_strings = list(stop_strings)
        self._longest = max((len(s) for s in self.stop_strings), default=0)
        self.decoder = IncrementalDecoder(tokenizer) if tokenizer is not None else None
        self.text = ""  # decoded new text so far (kept only as long as stop strings need)
        self.done = False

    def step(self, token_id: int) -> Step:
        if token_id in self.eos_ids:
            self.done = True
            return Step(keep=False, stop=True, text="")
        piece = self.decoder.add(token_id) if self.decoder is not None else ""
        if self.stop_strings and piece:
            # Only the tail can hold a stop string that was not there before this token.
            self.text = self.text[-(self._longest - 1):] if self._longest > 1 else ""
            self.text += piece
            self.done = any(s in self.text for s in self.stop_strings)
        return Step(keep=True, stop=self.done, text=piece)

    def flush(self) -> str:
        """Text of bytes still held back (an unfinished character becomes U+FFFD)."""
        return self.decoder.flush() if self.decoder is not None else ""


def cut_at_stop_strings(pieces: Iterable[str], stop_strings: Sequence[str]) -> Iterator[str]:
    """Pass text pieces through until the first stop string, which is left out with all after it.

    A stop string may arrive split over several pieces (tokens), so text that could be the
    start of one is held back until the next piece settles it; nothing printed is ever taken
    back. Meant for ``stream(..., tokenizer=..., stop_strings=...)`` text.
    """
    stops = [s for s in stop_strings if s]
    buffer = ""
    for piece in pieces:
        buffer += piece
        found = [buffer.find(s) for s in stops if s in buffer]
        if found:
            if min(found):
                yield buffer[: min(found)]
            return
        held = _longest_stop_prefix(buffer, stops)
        if len(buffer) > held:
            yield buffer[: len(buffer) - held]
            buffer = buffer[len(buffer) - held:]
    if buffer:
        yield buffer


def _longest_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that begins some stop string."""
    for size in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        tail = text[-size:]
        if any(s.startswith(tail) for s in stops):
            return size
    return 0
