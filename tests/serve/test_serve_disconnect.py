"""A streaming client that hangs up before its first chunk frees its slot at once.

The stream's cleanup used to live in the body generator's ``finally``: it never runs when
the body is cancelled before its first line, and under ASGI spec 2.4 Starlette stops
listening for disconnects altogether, so a stream still waiting for a slot decoded to
``max_tokens`` for nobody. ``sse.EventStream`` now watches ``receive`` itself and cancels
the job however the response ends. The uvicorn test hangs up while the prompt is encoded
(a tokenizer slowed to 0.5 s); the ASGI test drives the app as a 2.4 server would.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from serve_support import SlowModel

from scratchllm.serve import Engine, ServerConfig, start_in_thread


class SlowTokenizer:
    """The tiny model's tokenizer, 0.5 s to encode a prompt."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_prompt(self, *args, **kwargs):
        time.sleep(0.5)
        return self.inner.encode_prompt(*args, **kwargs)


@pytest.fixture
def slow_server(loaded):
    engine = Engine(SlowModel(loaded.model), SlowTokenizer(loaded.tokenizer), loaded.eos_ids,
                    max_batch=1, max_queue=1)
    submitted = []
    submit = engine.submit
    engine.submit = lambda job: (submitted.append(job), submit(job))[1]
    running = start_in_thread(engine, ServerConfig("slow"))
    yield running, submitted
    running.stop()


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "Hi"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
])
def test_hangup_before_the_first_chunk_frees_the_slot(slow_server, path, body):
    server, submitted = slow_server
    payload = httpx.Request("POST", server.url + path, json={
        **body, "max_tokens": 250, "temperature": 0, "stream": True})
    host, port = payload.url.host, payload.url.port
    raw = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(payload.read())}\r\n\r\n").encode() + payload.read()
    with socket.create_connection((host, port)) as sock:
        sock.sendall(raw)
        time.sleep(0.2)  # the server has the body and is encoding the prompt
    hung_up = time.monotonic()
    deadline = hung_up + 5
    while not submitted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert submitted, "the request never reached the engine"
    # 250 tokens at 20 ms a step would hold the only slot for 5 s; it must go within 1 s.
    while time.monotonic() < deadline:
        stats = httpx.get(server.url + "/health").json()
        if submitted[0].cancelled and stats["active"] == 0 and stats["queued"] == 0:
            break
        time.sleep(0.02)
    assert submitted[0].cancelled and time.monotonic() - hung_up < 1.5
    steps = server.engine.steps
    time.sleep(0.3)
    assert server.engine.steps == steps  # nothing decodes for a client that left
    # The slot serves the next request straight away.
    reply = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                       timeout=10)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2


def test_asgi_24_server_hangup_while_queued_frees_the_place(loaded):
    """Under ASGI spec 2.4 Starlette stops listening for disconnects and relies on ``send``
    failing; uvicorn's send to a gone client returns quietly. A stream still waiting for its
    first token must learn of the hang-up from ``receive`` all the same."""
    import asyncio
    import json

    from scratchllm.serve import create_app

    engine = Engine(SlowModel(loaded.model), loaded.tokenizer, loaded.eos_ids, max_batch=1,
                    max_queue=1)
    submitted = []
    submit = engine.submit
    engine.submit = lambda job: (submitted.append(job), submit(job))[1]
    app = create_app(engine, ServerConfig("slow"))
    engine.start()
    body = json.dumps({"prompt": "Hi", "max_tokens": 250, "temperature": 0,
                       "stream": True}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
             "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(0.3)  # the client leaves 0.3 s later
        return {"type": "http.disconnect"}

    async def send(message):  # as uvicorn's: quiet for a gone client
        pass

    async def run() -> float:
        start = time.monotonic()
        await asyncio.wait_for(app(scope, receive, send), timeout=4)
        return time.monotonic() - start

    try:
        took = asyncio.run(run())
        assert submitted and submitted[0].cancelled and took < 1.5
        deadline = time.monotonic() + 1
        while engine.stats()["active"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats() == {"active": 0, "queued": 0, "max_batch": 1, "max_queue": 1}
    finally:
        engine.close()
