"""Errors a client sees, in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.

The official clients turn this shape into their own exceptions (``openai.BadRequestError``
with ``.body["param"]`` naming the field), so a caller learns which field to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An HTTP error answer: ``status``, a message that says what to do, the field at fault."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_param(param: str, message: str) -> APIError:
    """400 for one request field; the message starts with the field's name."""
    return APIError(400, f"{param}: {message}", param=param, code="invalid_value")


class AnswerCutRequests:
    """ASGI middleware: a request still unanswered when uvicorn cancels it (the SIGTERM drain
    deadline passed, or a second Ctrl-C) gets HTTP 503 saying so, not uvicorn's bare 500
    "Internal Server Error", which reads as a bug; clients retry a 503 once the server is
    back. A streamed answer already under way can only be cut: its body ends early."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:
            if not started:
                body = json.dumps(error_body(
                    "the server shut down before this request was answered (it was still "
                    "running or queued when its --drain-timeout passed); send it again once "
                    "the server is back", "server_error", None, "server_shutting_down")).encode()
                with contextlib.suppress(OSError):  # the client may be gone too
                    await send({"type": "http.response.start", "status": 503, "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")]})
                    await send({"type": "http.response.body", "body": body})
            raise
