"""Server-sent events: ``data: {json}`` blocks and the closing ``data: [DONE]`` (OpenAI streams)."""

from __future__ import annotations

import json
from typing import Any

MEDIA_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering


def event(payload: dict[str, Any]) -> bytes:
    """One event; JSON never contains a raw newline, so one ``data:`` line holds it."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8") + b"\n\n"
