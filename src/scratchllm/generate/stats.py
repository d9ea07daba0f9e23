"""Timing of one generation: time to first token, prompt and decode tokens per second.

What a flag such as ``--quantize int8`` buys shows up in two numbers, as ``ollama run
--verbose`` reports them: the first token waits for the whole prompt (prefill, compute
bound), every later token for one pass over the weights (decode, memory bound).
``stream(..., stats=DecodeStats())`` fills one in as the tokens come.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class DecodeStats:
    """Filled by ``stream``: when it began, when the first and the last token came."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    started: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None

    def begin(self, prompt_tokens: int) -> None:
        self.prompt_tokens, self.generated_tokens = prompt_tokens, 0
        self.started, self.first_token_at, self.last_token_at = time.perf_counter(), None, None

    def token(self) -> None:
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.generated_tokens += 1

    @property
    def time_to_first_token(self) -> float | None:
        if self.started is None or self.first_token_at is None:
            return None
        return self.first_token_at - self.started

    @property
    def prompt_tokens_per_s(self) -> float | None:
        """Prompt tokens over the time to the first token (prefill plus one pick)."""
        ttft = self.time_to_first_token
        return self.prompt_tokens / ttft if ttft else None

    @property
    def decode_seconds(self) -> float | None:
        if self.first_token_at is None or self.last_token_at is None:
            return None
        return self.last_token_at - self.first_token_at

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after the first over the time they took: one model pass each."""
        seconds = self.decode_seconds
        return (self.generated_tokens - 1) / seconds if seconds else None

    def lines(self, load_seconds: float | None = None) -> list[str]:
        """A report to print, one measure per line (``ollama run --verbose``'s layout)."""
        out = []
        if load_seconds is not None:
            out.append(f"load time:           {load_seconds:.2f} s")
        out.append(f"prompt tokens:       {self.prompt_tokens}")
        ttft, prompt_rate = self.time_to_first_token, self.prompt_tokens_per_s
        if ttft is not None:
            out.append(f"time to first token: {ttft * 1000:.1f} ms")
        if prompt_rate is not None:
            out.append(f"prompt rate:         {prompt_rate:.1f} tokens/s")
        out.append(f"generated tokens:    {self.generated_tokens}")
        seconds, rate = self.decode_seconds, self.decode_tokens_per_s
        if rate is not None and seconds is not None:
            out.append(f"decode time:         {seconds:.2f} s")
            out.append(f"decode rate:         {rate:.1f} tokens/s")
        return out
