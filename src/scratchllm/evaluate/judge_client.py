"""The HTTP side of LLM-as-judge: one chat request to Ollama or an OpenAI-compatible server.

Built on httpx's async client, so several requests can be in flight at once (``workers``)
and each one can be given a hard total deadline: a socket timeout alone never fires against
a server that trickles a byte every few seconds. The reply body is streamed and reading stops
past ``max_response_bytes``. Redirects are followed the way httpx does it, which drops the
``Authorization`` header when a redirect leads to another host, so an API key never leaks.
Transient failures (timeouts, HTTP 429/5xx, dropped connections) are retried with
exponential backoff; a refused connection means no server is running, so that fails at once
with instructions for starting one.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import json
import os
import signal
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from scratchllm.errors import ConfigError, ScratchLLMError

APIS = ("ollama", "openai")
DEFAULT_ENDPOINTS = {"ollama": "http://localhost:11434", "openai": "http://localhost:8000"}
_PATHS = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_GROUP = getattr(builtins, "BaseExceptionGroup", ())  # Python 3.11+; anyio may raise one
T = TypeVar("T")


class JudgeUnavailableError(ScratchLLMError):
    """The judge endpoint cannot be reached or keeps failing."""


class _Transient(Exception):
    """A failure worth retrying (the message says what happened)."""


@dataclass
class JudgeClient:
    """One chat endpoint. ``endpoint`` is the server's base URL or the full chat URL.

    ``timeout`` is the total deadline of one request in seconds (connecting, waiting for the
    model and reading the reply); ``max_tokens`` bounds the reply length (the score is one
    number, so a small bound keeps a rambling judge cheap).
    """

    endpoint: str | None = None
    model: str = "llama3"
    api: str = "ollama"
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    api_key: str | None = None
    seed: int = 123
    max_tokens: int = 16
    max_response_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ConfigError(f"unknown judge API {self.api!r}; use one of {', '.join(APIS)}")
        base = (self.endpoint or DEFAULT_ENDPOINTS[self.api]).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"judge endpoint {base!r} must start with http:// or https://")
        for name in ("timeout", "max_tokens", "max_response_bytes"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"judge {name} must be positive, got {getattr(self, name)}")
        if self.retries < 0:
            raise ConfigError(f"judge retries must be 0 or more, got {self.retries}")
        self.url = base if base.endswith(_PATHS[self.api]) else base + _PATHS[self.api]

    def payload(self, prompt: str) -> dict[str, Any]:
        """Deterministic settings (temperature 0, fixed seed) so scores repeat (book 7.8)."""
        messages = [{"role": "user", "content": prompt}]
        if self.api == "ollama":
            return {"model": self.model, "messages": messages, "stream": False,
                    "options": {"seed": self.seed, "temperature": 0, "num_ctx": 2048,
                                "num_predict": self.max_tokens}}
        return {"model": self.model, "messages": messages, "temperature": 0, "seed": self.seed,
                "max_tokens": self.max_tokens}

    def reply_text(self, body: Any) -> str:
        try:
            if self.api == "ollama":
                return body["message"]["content"]
            return body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise JudgeUnavailableError(f"judge at {self.url} answered without a chat message "
                                        f"({str(body)[:200]}); check --api matches the server") from err

    def session(self, workers: int = 1) -> httpx.AsyncClient:
        """An HTTP client for up to ``workers`` requests at once (use it with ``async with``).

        A judge on this machine is reached directly, never through a proxy from the environment.
        """
        host = urllib.parse.urlsplit(self.url).hostname or ""
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout), follow_redirects=True,
            limits=httpx.Limits(max_connections=max(1, workers)),
            trust_env=host not in _LOOPBACK)

    def chat(self, prompt: str) -> str:
        """Send one user message; return the reply text (retrying transient failures)."""

        async def once() -> str:
            async with self.session() as http:
                return await self.achat(http, prompt)

        return run_sync(once)

    async def achat(self, http: httpx.AsyncClient, prompt: str) -> str:
        """:meth:`chat` on an open :meth:`session`, for running many requests concurrently."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                body = await asyncio.wait_for(self._post(http, prompt), self.timeout)
                return self.reply_text(body)
            except asyncio.TimeoutError:
                last = f"no complete reply within the {self.timeout:g} s deadline (--timeout)"
            except _Transient as err:
                last = str(err)
            except httpx.TransportError as err:
                if _refused(err):
                    raise JudgeUnavailableError(self._not_running()) from err
                last = f"{type(err).__name__}: {err}"
        raise JudgeUnavailableError(f"judge at {self.url} failed {self.retries + 1} times "
                                    f"(last: {last}); check the server's log")

    async def _post(self, http: httpx.AsyncClient, prompt: str) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with http.stream("POST", self.url, json=self.payload(prompt),
                               headers=headers) as response:
            data = await self._read_capped(response)
            if response.status_code == 429 or response.status_code >= 500:
                raise _Transient(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                hint = ("check --api-key" if response.status_code in (401, 403)
                        else "check --model-name and --api")
                raise JudgeUnavailableError(
                    f"judge at {self.url} refused the request (HTTP {response.status_code}: "
                    f"{data[:200]!r}); {hint}")
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _Transient(f"reply is not JSON ({data[:80]!r})") from err

    async def _read_capped(self, response: httpx.Response) -> bytes:
        """The body, refusing one past ``max_response_bytes`` (declared or actually sent)."""
        limit = self.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large(f"announces {int(declared):,} bytes")
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise self._too_large("sent more")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, what: str) -> JudgeUnavailableError:
        return JudgeUnavailableError(
            f"judge at {self.url} {what} than the {self.max_response_bytes:,}-byte limit on a "
            "reply; a chat reply holding one score is far smaller, so check --endpoint points "
            "at a chat API")

    def _not_running(self) -> str:
        if self.api == "ollama":
            hint = f"start Ollama with `ollama serve` and fetch the model with `ollama pull {self.model}`"
        else:
            hint = "start an OpenAI-compatible server (e.g. `vllm serve MODEL`)"
        return (f"no judge is running at {self.url} (connection refused); {hint}, "
                "or point --endpoint at a running server")


def _refused(err: BaseException) -> bool:
    """Whether a connection error was, somewhere down its chain, a refused connection."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or (
                isinstance(current, OSError) and current.errno == errno.ECONNREFUSED):
            return True
        if isinstance(current, _GROUP) and any(_refused(e) for e in current.exceptions):
            return True
        current = current.__cause__ or current.__context__
    return False


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from plain code, also where an event loop already runs (Jupyter):
    there it gets its own loop in a helper thread, since a loop cannot be entered twice."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_deferring_sigterm(make)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _run_deferring_sigterm(make: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run``, taking SIGTERM the way asyncio takes Ctrl-C: the coroutine is cancelled
    and its requests unwind, and only then, outside the loop, is the handler that was there
    before (the CLI's raises ``Terminated``; the default ends the process) given the signal.

    Why: a handler that raises at a random moment inside the loop can land in asyncio's or
    anyio's own machinery, which catches or defers it, and the run goes on to the end."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or \
            previous in (signal.SIG_IGN, None):
        return asyncio.run(make())
    caught: list[int] = []
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task]] = []

    async def main() -> T:
        running.append((asyncio.get_running_loop(), asyncio.current_task()))
        if caught:  # the signal came before the loop started
            raise asyncio.CancelledError
        return await make()

    def on_sigterm(signum: int, frame: Any) -> None:
        caught.append(signum)
        if running:
            loop, task = running[0]
            loop.call_soon_threadsafe(task.cancel)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        result = asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, previous)
        if caught:
            _deliver(previous, caught[0])
    return result


def _deliver(handler: Any, signum: int) -> None:
    """Hand a deferred signal to ``handler`` as the interpreter would have."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # the default action: the process ends
