"""Stop strings on streamed text: found even when split across tokens, never sent to the client.

Text that could be the start of a stop string is held back until the next token settles it,
so nothing already streamed ever has to be taken back (a client cannot unsee a chunk).
"""

from __future__ import annotations

from collections.abc import Sequence


class StopText:
    """Feed decoded pieces with ``add``; it returns the text that is safe to send."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def add(self, piece: str) -> str:
        """Text to send now; after a stop string is found, ``stopped`` is True and the stop
        string and everything after it are dropped."""
        if self.stopped or not piece:
            return ""
        if not self.stops:
            return piece
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return text[:cut]
        keep = self._partial_stop_length(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def finish(self) -> str:
        """Held-back text at the end of a sequence that stopped for another reason (it was
        the beginning of a stop string that never came)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        longest = min(len(text), max(len(s) for s in self.stops) - 1)
        for size in range(longest, 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self.stops):
                return size
        return 0
