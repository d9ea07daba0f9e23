"""A chat with one model: fit the conversation into the context window, stream each answer.

``ChatSession.ask(text)`` fits the prompt (dropping the oldest exchanges when the prompt and
``max_new_tokens`` would not fit, never the system message or the new message) and returns
a ``Reply``: iterate it for text pieces as they are generated. The answer joins the history
when it ends, or when ``Reply.stop()`` cuts it short (from the same thread, or from another
one between pieces): what was generated so far is kept, marked as cut. No terminal I/O here;
``scratchllm chat`` and a server both stand on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scratchllm.chat.conversation import Conversation, Turn
from scratchllm.chat.formats import PromptFormat
from scratchllm.errors import ConfigError, ContextLengthError
from scratchllm.generate import cut_at_stop_strings, stream
from scratchllm.generate.sampling import check_sampling_args


DEFAULT_ANSWER_TOKENS = 256


def default_answer_tokens(context_length: int) -> int:
    """`scratchllm chat`'s answer length when none is given: 256 tokens, but at most half the
    context, so a small model (the default pretraining run has 128 positions) still chats."""
    return max(1, min(DEFAULT_ANSWER_TOKENS, context_length // 2))


@dataclass(frozen=True)
class Sampling:
    """How answers are generated (``temperature=0`` is greedy)."""

    max_new_tokens: int = DEFAULT_ANSWER_TOKENS
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class FittedPrompt:
    ids: list[int]
    dropped: int  # oldest exchanges left out to fit


def fit_prompt(prompt_format: PromptFormat, system: str | None, turns: Sequence[Turn],
               user: str, context_length: int, max_new_tokens: int) -> FittedPrompt:
    """The prompt for ``user`` with as many of the newest ``turns`` as leave room for
    ``max_new_tokens`` in the context; ContextLengthError when not even the new message fits."""
    budget = context_length - max_new_tokens
    dropped = 0
    ids = prompt_format.encode(system, turns, user)
    while len(ids) > budget and dropped < len(turns):
        dropped += 1
        ids = prompt_format.encode(system, turns[dropped:], user)
    if len(ids) > budget:
        with_system = " with the system message" if system else ""
        raise ContextLengthError(
            f"this message needs {len(ids)} prompt tokens{with_system}; with room for "
            f"{max_new_tokens} new tokens that exceeds the {context_length}-token context; "
            "send a shorter message, shorten the system message or lower --max-new-tokens")
    return FittedPrompt(ids, dropped)


class Reply:
    """An answer being generated: iterate for text pieces; ``stop()`` cuts it short."""

    def __init__(self, session: "ChatSession", user: str, pieces: Iterator[str],
                 tokens: Iterator[str], dropped: int, prompt_ids: list[int]) -> None:
        self._session, self.user = session, user
        self._pieces, self._tokens = pieces, tokens
        self.dropped = dropped        # oldest exchanges dropped to fit this prompt
        self.prompt_ids = prompt_ids  # what the model was given
        self.parts: list[str] = []
        self.turn: Turn | None = None  # set once the answer is in the history
        self._stop_asked = False
        self._running = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def done(self) -> bool:
        return self.turn is not None

    @property
    def cut(self) -> bool:
        return self.turn is not None and self.turn.cut

    def __iter__(self) -> "Reply":
        return self

    def __next__(self) -> str:
        if self.turn is not None:
            raise StopIteration
        if self._stop_asked:
            self._finish(cut=True)
            raise StopIteration
        self._running = True
        try:
            piece = next(self._pieces)
        except StopIteration:
            self._finish(cut=False)
            raise
        finally:
            self._running = False
        self.parts.append(piece)
        return piece

    def stop(self) -> None:
        """End the answer where it is; it joins the history as generated so far, marked cut.
        Called while another thread is inside ``next()``, it takes effect after that piece."""
        self._stop_asked = True
        if not self._running:
            self._finish(cut=True)

    def _finish(self, cut: bool) -> None:
        if self.turn is not None:
            return
        self._pieces.close()
        self._tokens.close()  # leaves the model's eval mode as it was
        self.turn = self._session.conversation.add(self.user, self.text, cut)


class ChatSession:
    """One model, one conversation, one way of sampling."""

    def __init__(self, model: nn.Module, tokenizer: Any, prompt_format: PromptFormat, *,
                 eos_ids: Sequence[int] = (), sampling: Sampling = Sampling(),
                 system: str | None = None, context_length: int | None = None) -> None:
        self.model, self.tokenizer, self.format = model, tokenizer, prompt_format
        self.eos_ids = tuple(eos_ids)
        self.sampling = sampling
        self.context_length = context_length or model.config.context_length
        check_sampling_args(sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p)
        count = sampling.max_new_tokens
        if isinstance(count, bool) or not isinstance(count, int) \
                or not 1 <= count < self.context_length:
            raise ConfigError(f"max_new_tokens must be at least 1 and below the model's "
                              f"{self.context_length}-token context, got {count}")
        self.conversation = Conversation(system or None)
        self._generator: torch.Generator | None = None
        if sampling.seed is not None:  # one stream of random numbers for the whole chat
            device = next(model.parameters()).device
            self._generator = torch.Generator(device=device).manual_seed(sampling.seed)

    def prompt_for(self, user: str) -> FittedPrompt:
        """The prompt ids ``ask(user)`` would generate from, and how many exchanges it drops."""
        return fit_prompt(self.format, self.conversation.system, self.conversation.turns, user,
                          self.context_length, self.sampling.max_new_tokens)

    def ask(self, user: str) -> Reply:
        """Start answering ``user``; the oldest exchanges that do not fit are forgotten."""
        fitted = self.prompt_for(user)
        self.conversation.drop_oldest(fitted.dropped)
        s = self.sampling
        tokens = stream(self.model, fitted.ids, s.max_new_tokens, temperature=s.temperature,
                        top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, eos_id=self.eos_ids,
                        stop_strings=list(self.format.stop_strings) or None,
                        tokenizer=self.tokenizer, generator=self._generator)
        pieces = cut_at_stop_strings(tokens, self.format.stop_strings)
        return Reply(self, user, pieces, tokens, fitted.dropped, fitted.ids)
