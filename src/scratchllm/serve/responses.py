"""Engine events to OpenAI's response objects: whole replies and streamed chunks.

``Reply`` collects a request's events. For streaming it turns each event into the chunk a
client expects (``text_completion`` or ``chat.completion.chunk``, all with the same ``id``);
otherwise it builds the final ``text_completion`` / ``chat.completion`` object. Usage counts
every prompt token once per prompt and every token each choice generated (an end token
included: the model did produce it).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from scratchllm.serve.sequence import Delta, Finish, TokenLogprob


class Reply:
    def __init__(self, chat: bool, model: str, n_choices: int, prompt_tokens: int,
                 logprobs: bool) -> None:
        self.chat, self.model, self.logprobs = chat, model, logprobs
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        self.texts = [""] * n_choices
        self.tokens: list[list[TokenLogprob]] = [[] for _ in range(n_choices)]
        self.finish: list[str | None] = [None] * n_choices
        self.completion_tokens = [0] * n_choices

    @property
    def done(self) -> bool:
        return all(reason is not None for reason in self.finish)

    def usage(self) -> dict[str, int]:
        completion = sum(self.completion_tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    # ------------------------------------------------------------------ events
    def add(self, event: Delta | Finish) -> list[dict[str, Any]]:
        """Record ``event``; return the chunks to stream for it (none for an empty delta)."""
        i = event.index
        offset = len(self.texts[i])
        self.texts[i] += event.text
        if isinstance(event, Delta):
            self.tokens[i] += event.logprobs
            if not event.text and not event.logprobs:
                return []
            return [self._chunk(i, event.text, event.logprobs, None, offset)]
        self.finish[i] = event.reason
        self.completion_tokens[i] = event.completion_tokens
        return [self._chunk(i, event.text, [], event.reason, offset)]

    def opening_chunks(self) -> list[dict[str, Any]]:
        """Chat streams open each choice with ``delta.role = "assistant"``."""
        if not self.chat:
            return []
        return [self._envelope([{"index": i, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}])
                for i in range(len(self.texts))]

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk of a stream with ``stream_options.include_usage``."""
        return {**self._envelope([]), "usage": self.usage()}

    # ------------------------------------------------------------------ shapes
    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices}

    def _chunk(self, i: int, text: str, tokens: list[TokenLogprob], reason: str | None,
               offset: int) -> dict[str, Any]:
        logprobs = self._logprobs(tokens, offset) if self.logprobs and tokens else None
        if self.chat:
            delta = {"content": text} if text or reason is None else {}
            choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        else:
            choice = {"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason}
        return self._envelope([choice])

    def response(self) -> dict[str, Any]:
        """The whole reply (not streamed)."""
        choices = []
        for i, text in enumerate(self.texts):
            logprobs = self._logprobs(self.tokens[i], 0) if self.logprobs else None
            if self.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "logprobs": logprobs, "finish_reason": self.finish[i]})
            else:
                choices.append({"index": i, "text": text, "logprobs": logprobs,
                                "finish_reason": self.finish[i]})
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}

    def _logprobs(self, tokens: list[TokenLogprob], offset: int) -> dict[str, Any]:
        if self.chat:
            return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes,
                                 "top_logprobs": [{"token": s, "logprob": lp, "bytes": b}
                                                  for s, b, lp in t.top]} for t in tokens],
                    "refusal": None}
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t.token)
        return {"tokens": [t.token for t in tokens],
                "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [_by_text(t.top) for t in tokens],
                "text_offset": offsets}


def _by_text(top: list[tuple[str, list[int], float]]) -> dict[str, float]:
    """The legacy format keys alternatives by text: tokens with the same text (bytes of
    unfinished characters all show as U+FFFD) keep the likeliest one's logprob."""
    out: dict[str, float] = {}
    for text, _, logprob in top:
        out.setdefault(text, logprob)
    return out
