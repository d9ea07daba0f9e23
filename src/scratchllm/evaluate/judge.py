"""LLM-as-judge: a larger model scores each response from 0 to 100 (book 7.8).

The judge is any chat model behind an HTTP endpoint: Ollama (``POST /api/chat`` with
``"stream": false``, the book's choice with Llama 3) or any OpenAI-compatible server
(``POST /v1/chat/completions``: vLLM, llama.cpp's server, LM Studio, ...). Only the standard
library's urllib is used. Requests time out, and transient failures (timeouts, HTTP 429/5xx,
dropped connections) are retried with exponential backoff; a refused connection means no
server is running, so it fails at once with instructions for starting one.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.utils.atomic import atomic_write_json
from scratchllm.data.instruction import format_input
from scratchllm.errors import ConfigError, DataError, ScratchLLMError

APIS = ("ollama", "openai")
DEFAULT_ENDPOINTS = {"ollama": "http://localhost:11434", "openai": "http://localhost:8000"}
_PATHS = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}


class JudgeUnavailableError(ScratchLLMError):
    """The judge endpoint cannot be reached or keeps failing."""


def judge_prompt(entry: dict[str, Any], response_key: str = "model_response") -> str:
    """Ask for a single integer score of a response against the reference answer."""
    return (
        "You are grading an answer to a task.\n\n"
        f"Task:\n{format_input(entry)}\n\n"
        f"Reference answer:\n{entry['output']}\n\n"
        f"Answer to grade:\n{entry[response_key]}\n\n"
        "How good is the answer to grade, compared with the reference answer? Give a score "
        "from 0 (useless or wrong) to 100 (as good as the reference). "
        "Reply with the integer score only."
    )


_NUMBER = re.compile(r"(?<![\d.])(\d{1,3})(?:\.\d+)?(?![\d])")


def parse_score(text: str) -> int | None:
    """The first number from 0 to 100 in the judge's reply ("Score: 85/100" -> 85), else None."""
    for match in _NUMBER.finditer(text or ""):
        value = int(match.group(1))
        if 0 <= value <= 100:
            return value
    return None


@dataclass
class JudgeClient:
    """One chat endpoint. ``endpoint`` is the server's base URL or the full chat URL."""

    endpoint: str | None = None
    model: str = "llama3"
    api: str = "ollama"
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    api_key: str | None = None
    seed: int = 123

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ConfigError(f"unknown judge API {self.api!r}; use one of {', '.join(APIS)}")
        base = (self.endpoint or DEFAULT_ENDPOINTS[self.api]).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"judge endpoint {base!r} must start with http:// or https://")
        self.url = base if base.endswith(_PATHS[self.api]) else base + _PATHS[self.api]

    def payload(self, prompt: str) -> dict[str, Any]:
        """Deterministic settings (temperature 0, fixed seed) so scores repeat (book 7.8)."""
        messages = [{"role": "user", "content": prompt}]
        if self.api == "ollama":
            return {"model": self.model, "messages": messages, "stream": False,
                    "options": {"seed": self.seed, "temperature": 0, "num_ctx": 2048}}
        return {"model": self.model, "messages": messages, "temperature": 0, "seed": self.seed}

    def reply_text(self, body: dict[str, Any]) -> str:
        try:
            if self.api == "ollama":
                return body["message"]["content"]
            return body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise JudgeUnavailableError(f"judge at {self.url} answered without a chat message "
                                        f"({str(body)[:200]}); check --api matches the server") from err

    def _post(self, prompt: str) -> dict[str, Any]:
        data = json.dumps(self.payload(prompt)).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with _opener(self.url).open(request, timeout=self.timeout) as response:
            return json.loads(response.read().decode("utf-8"))

    def chat(self, prompt: str) -> str:
        """Send one user message; return the reply text (retrying transient failures)."""
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self.reply_text(self._post(prompt))
            except urllib.error.HTTPError as err:
                if err.code != 429 and err.code < 500:
                    raise JudgeUnavailableError(
                        f"judge at {self.url} refused the request (HTTP {err.code}: "
                        f"{err.read()[:200]!r}); check --model-name and --api") from err
                last_error = err
            except urllib.error.URLError as err:
                if isinstance(err.reason, ConnectionRefusedError):
                    raise JudgeUnavailableError(self._not_running()) from err
                last_error = err
            except (TimeoutError, socket.timeout, ConnectionError, json.JSONDecodeError) as err:
                last_error = err
        raise JudgeUnavailableError(f"judge at {self.url} failed {self.retries + 1} times "
                                    f"(last: {last_error}); check the server's log") from last_error

    def _not_running(self) -> str:
        if self.api == "ollama":
            hint = f"start Ollama with `ollama serve` and fetch the model with `ollama pull {self.model}`"
        else:
            hint = "start an OpenAI-compatible server (e.g. `vllm serve MODEL`)"
        return (f"no judge is running at {self.url} (connection refused); {hint}, "
                "or point --endpoint at a running server")


def _opener(url: str) -> urllib.request.OpenerDirector:
    """A local judge is reached directly, never through an http_proxy from the environment."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in ("localhost", "127.0.0.1", "::1"):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


@dataclass
class JudgeResult:
    items: list[dict[str, Any]]
    scores: list[int | None] = field(default_factory=list)

    @property
    def average(self) -> float | None:
        valid = [s for s in self.scores if s is not None]
        return sum(valid) / len(valid) if valid else None

    @property
    def n_unparsed(self) -> int:
        return sum(s is None for s in self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {"average_score": self.average, "n_scored": len(self.scores) - self.n_unparsed,
                "n_unparsed": self.n_unparsed, "items": self.items}


def judge_responses(entries: Sequence[dict[str, Any]], client: JudgeClient, *,
                    response_key: str = "model_response",
                    on_item: Callable[[int, int | None], None] | None = None) -> JudgeResult:
    """Score every entry; an unparseable reply gets score None and is left out of the average."""
    if not entries:
        raise DataError("no responses to judge")
    for index, entry in enumerate(entries):
        missing = [k for k in ("instruction", "output", response_key) if k not in entry]
        if missing:
            raise DataError(f"response entry {index} lacks {missing}; judge a file written by "
                            "`scratchllm finetune instruct` or pass --response-key")
    result = JudgeResult(items=[])
    for index, entry in enumerate(entries):
        reply = client.chat(judge_prompt(entry, response_key))
        score = parse_score(reply)
        result.scores.append(score)
        result.items.append({**entry, "score": score, "judge_reply": reply})
        if on_item is not None:
            on_item(index, score)
    return result


def save_judgement(path: str | Path, result: JudgeResult) -> Path:
    """Write per-item scores and the average as JSON, atomically."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result.to_dict())
    return path
