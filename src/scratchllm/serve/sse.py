"""Server-sent events: ``data: {json}`` blocks and the closing ``data: [DONE]`` (OpenAI streams).

``EventStream`` sends them and calls ``on_close`` however the response ends: finished, failed,
or the client gone. Starlette's own streaming response leaves cleanup to the body generator's
``finally``, which never runs when the body is cancelled before its first line (a client that
left before the first chunk) and which, under ASGI spec 2.4 servers, learns of a hang-up only
when a chunk is sent: a request still waiting for a slot would then keep its place and decode
to ``max_tokens`` for nobody.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

MEDIA_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering


def event(payload: dict[str, Any]) -> bytes:
    """One event; JSON never contains a raw newline, so one ``data:`` line holds it."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8") + b"\n\n"


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that watches for the client's disconnect itself (on
    every ASGI version) and always calls ``on_close`` when it ends."""

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(events, media_type=MEDIA_TYPE, headers=HEADERS)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # ASGI 2.4 servers raise it on a send to a gone client
                        pass
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(watch)
        finally:
            self.on_close()
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()
