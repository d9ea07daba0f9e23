"""The HTTP side: FastAPI routes of an OpenAI-compatible server in front of one ``Engine``.

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` and
``GET /health``, plus the web page at ``/`` and its routes (``serve.page``). Every error, also
a wrong path or method, answers in OpenAI's error shape. With an API key every route but
``/health`` and the page's static files wants ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchllm.chat import PromptFormat, choose_format
from scratchllm.errors import ConfigError
from scratchllm.serve import sse
from scratchllm.serve.engine import Engine, EngineClosedError, QueueFullError
from scratchllm.serve.errors import AnswerCutRequests, APIError, error_body
from scratchllm.serve.page import PUBLIC_PATHS, add_page_routes
from scratchllm.serve.prompts import budget, chat_prompt, check_ids, encode_text
from scratchllm.serve.ratings import RatingsFile
from scratchllm.serve.responses import Reply
from scratchllm.serve.schemas import Settings, parse_chat, parse_completion
from scratchllm.serve.sequence import Failed, Job

DEFAULT_MAX_BODY_BYTES = 4 << 20


@dataclass
class CompareModel:
    """A second model served beside the first (``serve --compare-model``), for the page's
    side-by-side ratings; requests name it by ``model_id``."""

    engine: Engine
    model_id: str
    metadata: dict[str, Any] | None = None


@dataclass
class ServerConfig:
    """``metadata``/``prompt_style`` choose the chat prompt format (``chat.choose_format``);
    ``ratings`` is where the page's compare tab saves ratings (None: not saved);
    ``compare`` an optional second model."""

    model_id: str
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    metadata: dict[str, Any] | None = None
    prompt_style: str | None = None
    ratings: RatingsFile | None = None
    compare: CompareModel | None = None


def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    """The ASGI app. The engines are started with the app and closed when it shuts down
    (after uvicorn has let in-flight requests finish)."""
    served = {config.model_id: (engine, choose_format(engine.tokenizer, config.metadata,
                                                      config.prompt_style))}
    if config.compare is not None:
        other = config.compare
        if other.model_id in served:
            raise ConfigError(f"the compare model and the served model are both named "
                              f"{other.model_id!r}; give one another name")
        served[other.model_id] = (other.engine, choose_format(
            other.engine.tokenizer, other.metadata, config.prompt_style))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for started, _ in served.values():
            started.start()
        yield
        for started, _ in served.values():
            await run_in_threadpool(started.close)

    def pick(asked: str | None, param: str = "model") -> tuple[str, Engine, PromptFormat]:
        """The model a request names (the first one when it names none); 404 otherwise."""
        name = config.model_id if asked is None else asked
        if name not in served:
            raise APIError(404, f"model {asked!r} does not exist; this server serves "
                           f"{', '.join(map(repr, served))} (GET /v1/models)", param=param,
                           code="model_not_found")
        return (name, *served[name])
    app = FastAPI(title="scratchllm", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = (f"no route {request.method} {request.url.path}; see GET /v1/models, "
                   "POST /v1/completions, POST /v1/chat/completions" if err.status_code in
                   (404, 405) else str(err.detail))
        return JSONResponse(error_body(message, "invalid_request_error"),
                            status_code=err.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(err).__name__}: {err}",
                                       "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": config.model_id, **engine.stats()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(name, created) for name in served]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        return _model_card(pick(model_id, "model_id")[0], created)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse_completion(await read_json(request, config.max_body_bytes))
        model_id, engine, _ = pick(req.settings.model)

        def encode() -> tuple[list[list[int]], list[int]]:
            prompts, limits = [], []
            for i, prompt in enumerate(req.prompts):
                param = "prompt" if len(req.prompts) == 1 else f"prompt[{i}]"
                ids = encode_text(engine.tokenizer, prompt) if isinstance(prompt, str) else prompt
                prompts.append(check_ids(ids, engine.vocab_size, param))
                limits.append(budget(len(ids), req.settings.max_tokens, engine.context_length,
                                     chat=False, param=param))
            return prompts, limits

        prompts, limits = await run_in_threadpool(encode)
        return await _respond(request, engine, model_id, req.settings, prompts, limits,
                              chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse_chat(await read_json(request, config.max_body_bytes))
        model_id, engine, prompt_format = pick(req.settings.model)

        def encode() -> tuple[list[list[int]], list[int]]:
            ids = check_ids(chat_prompt(prompt_format, req.messages), engine.vocab_size,
                            "messages")
            return [ids], [budget(len(ids), req.settings.max_tokens, engine.context_length,
                                  chat=True, param="messages")]

        prompts, limits = await run_in_threadpool(encode)
        req.settings.stop += [s for s in prompt_format.stop_strings if s not in req.settings.stop]
        return await _respond(request, engine, model_id, req.settings, prompts, limits,
                              chat=True)

    add_page_routes(app, engine, config.ratings,
                    lambda request: read_json(request, config.max_body_bytes))
    app.add_middleware(_AuthMiddleware, api_key=config.api_key)
    app.add_middleware(AnswerCutRequests)  # outermost: it sees every request end
    return app


def _model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "scratchllm"}


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing one over ``limit`` bytes (413) before reading all of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON ({err})") from None


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than the server's limit of {limit:,} "
                    "bytes (scratchllm serve --max-request-bytes)", code="request_too_large")


async def _respond(request: Request, engine: Engine, model_id: str, settings: Settings,
                   prompts: list[list[int]], limits: list[int], *, chat: bool):
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job = Job(prompts, limits, emit=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
              n=settings.n, sampling=settings.sampling, stop=settings.stop,
              logprobs=settings.logprobs)
    try:
        engine.submit(job)
    except QueueFullError as err:
        raise APIError(429, str(err), code="queue_full", headers={"Retry-After": "1"}) from None
    except EngineClosedError as err:
        raise APIError(503, str(err), code="shutting_down") from None
    reply = Reply(chat, model_id, job.n_sequences, sum(map(len, prompts)),
                  settings.logprobs is not None)

    def cancel() -> None:
        if not reply.done:
            job.cancel()
            engine.wake()

    if settings.stream:  # EventStream cancels the job however the stream ends
        return sse.EventStream(_stream(events, reply, settings), on_close=cancel)
    watcher = asyncio.create_task(_on_disconnect(request, lambda: events.put_nowait(None)))
    try:
        while not reply.done:
            event = await events.get()
            if event is None:  # the client hung up: free its slots, nobody reads this
                cancel()
                return JSONResponse(error_body("client closed the request",
                                               "invalid_request_error"), status_code=499)
            if isinstance(event, Failed):
                raise APIError(500, event.message, code="generation_failed")
            reply.add(event)
    finally:
        watcher.cancel()
        cancel()
    return JSONResponse(reply.response())


async def _stream(events: asyncio.Queue, reply: Reply,
                  settings: Settings) -> AsyncIterator[bytes]:
    for chunk in reply.opening_chunks():
        yield sse.event(chunk)
    while not reply.done:
        event = await events.get()
        if isinstance(event, Failed):
            yield sse.event(error_body(event.message, "server_error", None,
                                       "generation_failed"))
            return
        for chunk in reply.add(event):
            yield sse.event(chunk)
    if settings.include_usage:
        yield sse.event(reply.usage_chunk())
    yield sse.DONE


async def _on_disconnect(request: Request, then) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            then()
            return


class _AuthMiddleware:
    """401 on every route but /health and the page's files without ``Authorization: Bearer
    KEY`` (constant-time comparison). Plain ASGI, so streamed responses pass through
    untouched."""

    def __init__(self, app, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.api_key or (
                scope["path"] in PUBLIC_PATHS and scope["method"] in ("GET", "HEAD")):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                              self.api_key.encode()):
            return await self.app(scope, receive, send)
        message = ("missing API key: send 'Authorization: Bearer KEY'" if not given else
                   "incorrect API key")
        response = JSONResponse(error_body(message, "authentication_error", None,
                                           "invalid_api_key"), status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
