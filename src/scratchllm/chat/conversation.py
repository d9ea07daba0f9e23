"""A conversation as data: the system message and the exchanges so far, no model, no terminal.

``scratchllm chat`` keeps one; a server can build one per request from the messages it was
sent. A ``Turn`` is one exchange: what the user asked and what the model answered. An answer
the user stopped early stays in the history as generated so far, with ``cut`` set, so the
model sees the same text the user saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Turn:
    """One exchange: the user's message and the model's answer to it."""

    user: str
    assistant: str
    cut: bool = False  # the answer was stopped before the model ended it


@dataclass
class Conversation:
    """The system message (or None) and the exchanges so far, oldest first."""

    system: str | None = None
    turns: list[Turn] = field(default_factory=list)

    def reset(self) -> None:
        """Forget every exchange; the system message stays."""
        self.turns.clear()

    def set_system(self, text: str | None) -> None:
        """A new system message starts a new conversation (the old answers followed the old one)."""
        self.system = text or None
        self.reset()

    def add(self, user: str, assistant: str, cut: bool = False) -> Turn:
        turn = Turn(user, assistant, cut)
        self.turns.append(turn)
        return turn

    def drop_oldest(self, count: int) -> None:
        """Forget the ``count`` oldest exchanges (to fit the context window)."""
        del self.turns[:count]


def as_messages(system: str | None, turns: Sequence[Turn], user: str | None = None
                ) -> list[dict[str, Any]]:
    """Chat-template messages: system first (if any), each exchange, then the new user message."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    for turn in turns:
        messages.append({"role": "user", "content": turn.user})
        messages.append({"role": "assistant", "content": turn.assistant})
    if user is not None:
        messages.append({"role": "user", "content": user})
    return messages
