"""Checking request bodies of /v1/completions and /v1/chat/completions field by field.

Every refusal is a 400 that names the field (``param``) and the accepted values. Fields that
change OpenAI's behaviour but that scratchllm does not implement (``echo``, penalties,
``logit_bias``, tools) are refused rather than silently ignored; purely informational ones
(``user``, ``metadata``) are accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scratchllm.serve.errors import APIError, bad_param
from scratchllm.serve.sequence import Sampling

MAX_N = 128
MAX_STOPS = 16
MAX_TOP_LOGPROBS = 20
CHAT_ROLES = ("system", "developer", "user", "assistant")


@dataclass
class Settings:
    """What both endpoints share once checked."""

    model: str | None
    sampling: Sampling
    max_tokens: int | None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    logprobs: int | None = None  # alternatives per token; None: no logprobs at all
    stream: bool = False
    include_usage: bool = False


@dataclass
class CompletionRequest:
    settings: Settings
    prompts: list[str | list[int]]


@dataclass
class ChatRequest:
    settings: Settings
    messages: list[dict[str, str]]


def _number(body: dict, name: str, low: float, high: float, default: float | None,
            *, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise bad_param(name, f"must be a number in {bracket}{low:g}, {high:g}], got {value!r}")
    return float(value)


def _integer(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low \
            or (high is not None and value > high):
        limit = f"from {low} to {high}" if high is not None else f">= {low}"
        raise bad_param(name, f"must be an integer {limit}, got {value!r}")
    return value


def _boolean(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_param(name, f"must be true or false, got {value!r}")
    return value


def _refuse_unsupported(body: dict) -> None:
    checks = {
        "echo": lambda v: v in (None, False),
        "suffix": lambda v: v in (None, ""),
        "presence_penalty": lambda v: v in (None, 0),
        "frequency_penalty": lambda v: v in (None, 0),
        "logit_bias": lambda v: not v,
        "tools": lambda v: not v,
        "functions": lambda v: not v,
        "response_format": lambda v: v in (None, {"type": "text"}),
    }
    for name, ok in checks.items():
        if name in body and not ok(body[name]):
            raise bad_param(name, f"{body[name]!r} is not supported by scratchllm serve; "
                            "leave it out")
    best_of = body.get("best_of")
    if best_of is not None and best_of != body.get("n", 1):
        raise bad_param("best_of", "is not supported by scratchllm serve; use n")


def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) \
            or len(stops) > MAX_STOPS:
        raise bad_param("stop", f"must be a non-empty string or a list of at most {MAX_STOPS} "
                        f"non-empty strings, got {value!r:.100}")
    return list(stops)


def _settings(body: Any, chat: bool) -> Settings:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    _refuse_unsupported(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_param("model", f"must be a string, got {model!r:.80}")
    top_k = _integer(body, "top_k", -1)
    sampling = Sampling(
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),  # 0 stays 0: greedy
        top_p=_number(body, "top_p", 0.0, 1.0, None, low_open=True),
        top_k=top_k if top_k is not None and top_k > 0 else None,  # -1 / 0: off (vLLM)
        min_p=_number(body, "min_p", 0.0, 1.0, None),
        seed=_integer(body, "seed", -2 ** 63, 2 ** 64 - 1))
    if sampling.seed is not None and sampling.seed < 0:  # torch seeds are unsigned
        sampling = Sampling(**{**sampling.__dict__, "seed": sampling.seed % 2 ** 64})
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad_param("stream_options", "is only allowed with stream: true")
        if not isinstance(options, dict):
            raise bad_param("stream_options", f"must be an object, got {options!r:.80}")
        include_usage = _boolean(options, "include_usage")
    if chat:
        logprobs = None
        top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        if _boolean(body, "logprobs"):
            logprobs = top or 0
        elif top is not None:
            raise bad_param("top_logprobs", "needs logprobs: true")
    else:
        logprobs = _integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    return Settings(model, sampling, max_tokens, _stop(body), _integer(body, "n", 1, MAX_N) or 1,
                    logprobs, stream, include_usage)


def parse_completion(body: Any) -> CompletionRequest:
    settings = _settings(body, chat=False)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif _is_ids(prompt):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(p, str) or _is_ids(p) for p in prompt):
        prompts = [p if isinstance(p, str) else list(p) for p in prompt]
    else:
        raise bad_param("prompt", "must be a string, a list of strings, a list of token ids "
                        f"or a list of such lists, got {prompt!r:.100}")
    if len(prompts) * settings.n > MAX_N:
        raise bad_param("n", f"{len(prompts)} prompts x n={settings.n} choices exceed "
                        f"{MAX_N} sequences per request")
    return CompletionRequest(settings, prompts)


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value)


def parse_chat(body: Any) -> ChatRequest:
    settings = _settings(body, chat=True)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_param("messages", "must be a non-empty list of {role, content} objects")
    return ChatRequest(settings, [_message(m, i) for i, m in enumerate(messages)])


def _message(message: Any, index: int) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_param(where, f"must be an object with role and content, got {message!r:.80}")
    role = message.get("role")
    if role not in CHAT_ROLES:
        raise bad_param(f"{where}.role", f"must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
    content = message.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise bad_param(f"{where}.content", "only text parts ({\"type\": \"text\", "
                            "\"text\": ...}) are supported")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise bad_param(f"{where}.content", f"must be a string, got {content!r:.80}")
    return {"role": role, "content": content}
