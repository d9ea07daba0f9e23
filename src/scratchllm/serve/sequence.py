"""One generated sequence (one choice of a request) and what the engine tells the client about it.

The engine owns the model and the batch; this module owns everything that happens to one row
of logits: picking the token with the request's own sampling settings and random generator,
its log-probabilities, decoding it to text, and deciding whether the sequence is finished.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from scratchllm.generate.sampling import sample_next_token
from scratchllm.model.kv_cache import KVCache
from scratchllm.serve.stop_text import StopText
from scratchllm.tokenizers.streaming import IncrementalDecoder

LOGPROB_FLOOR = -9999.0  # JSON has no -inf


@dataclass(frozen=True)
class Sampling:
    """How a request picks tokens; ``temperature == 0`` is greedy."""

    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None


@dataclass
class TokenLogprob:
    """A generated token's log-probability under the model (before any sampling filter)
    and the ``top`` likeliest alternatives as (text, bytes, logprob)."""

    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]


@dataclass
class Delta:
    """New text of choice ``index`` (may be empty while a stop string is undecided)."""

    index: int
    text: str
    logprobs: list[TokenLogprob]


@dataclass
class Finish:
    """Choice ``index`` is done: ``reason`` is "stop" or "length"; ``text`` is its last piece."""

    index: int
    reason: str
    text: str
    completion_tokens: int


@dataclass
class Failed:
    """The request cannot go on (the message says why)."""

    message: str


Event = Delta | Finish | Failed


@dataclass
class Job:
    """One API request: ``prompts`` x ``n`` choices; choice ``p * n + j`` is prompt p's j-th.

    ``emit`` is called from the engine thread with every event; it must be thread-safe.
    """

    prompts: list[list[int]]
    max_tokens: list[int]
    emit: Callable[[Event], None]
    n: int = 1
    sampling: Sampling = Sampling()
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Stop generating (the client went away); the engine frees the slots next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def n_sequences(self) -> int:
        return len(self.prompts) * self.n


def choice_generator(seed: int | None, choice: int) -> torch.Generator:
    """The random generator of one choice: choice 0 uses ``seed`` itself (as ``scratchllm
    generate --seed`` does), the others a seed derived from it; no seed means fresh entropy."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    elif choice == 0:
        generator.manual_seed(seed)
    else:
        digest = hashlib.blake2b(f"{seed}:{choice}".encode(), digest_size=8).digest()
        generator.manual_seed(int.from_bytes(digest, "little") & (2 ** 63 - 1))
    return generator


class SequenceState:
    """A choice being generated: its cache, sampler, text decoder and stop rules."""

    def __init__(self, job: Job, index: int, cache: KVCache, tokenizer: object,
                 eos_ids: Collection[int]) -> None:
        self.job, self.index, self.cache = job, index, cache
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self.max_tokens = job.max_tokens[index // job.n]
        self.generator = choice_generator(job.sampling.seed, index)
        self.decoder = IncrementalDecoder(tokenizer)
        self.stop_text = StopText(job.stop)
        self.last_token: int | None = None
        self.generated = 0
        self.finished_reason: str | None = None

    def pick(self, logits: torch.Tensor, greedy_token: int | None = None) -> int:
        """The next token from this row's (vocab,) logits."""
        s = self.job.sampling
        if s.temperature == 0:
            return int(logits.argmax()) if greedy_token is None else greedy_token
        token = sample_next_token(logits[None].float(), s.temperature, s.top_k, s.top_p,
                                  s.min_p, generator=self.generator)
        return int(token[0])

    def accept(self, token: int, logits: torch.Tensor) -> list[Event]:
        """Record the chosen token; return the events it causes (a delta, maybe a finish)."""
        self.last_token = token
        self.generated += 1
        if token in self.eos_ids:
            return [self._finish("stop", self.stop_text.add(self.decoder.flush()))]
        logprobs = [self._logprob(token, logits)] if self.job.logprobs is not None else []
        events: list[Event] = [Delta(self.index, self.stop_text.add(self.decoder.add(token)),
                                     logprobs)]
        if self.stop_text.stopped:
            events.append(self._finish("stop", ""))
        elif self.generated >= self.max_tokens:
            tail = self.stop_text.add(self.decoder.flush())
            events.append(self._finish("stop" if self.stop_text.stopped else "length", tail))
        return events

    @property
    def done(self) -> bool:
        return self.finished_reason is not None

    def _finish(self, reason: str, text: str) -> Finish:
        self.finished_reason = reason
        return Finish(self.index, reason, text + self.stop_text.finish(), self.generated)

    def _logprob(self, token: int, logits: torch.Tensor) -> TokenLogprob:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top: list[tuple[str, list[int], float]] = []
        if self.job.logprobs:
            values, ids = torch.topk(logprobs, min(self.job.logprobs, logprobs.numel()))
            top = [(*self._token_text(int(i)), _finite(float(v)))
                   for v, i in zip(values, ids)]
        text, raw = self._token_text(token)
        return TokenLogprob(text, raw, _finite(float(logprobs[token])), top)

    def _token_text(self, token: int) -> tuple[str, list[int]]:
        return token_text(self.tokenizer, token)


def token_text(tokenizer: object, token: int) -> tuple[str, list[int]]:
    """A single token's text and bytes (a token may hold part of a character: U+FFFD)."""
    to_bytes = getattr(tokenizer, "decode_bytes", None)
    if to_bytes is not None and getattr(tokenizer, "has_byte_decoding", True):
        raw = bytes(to_bytes([token]))
        return raw.decode("utf-8", errors="replace"), list(raw)
    text = tokenizer.decode([token])
    return text, list(text.encode("utf-8"))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else LOGPROB_FLOOR
