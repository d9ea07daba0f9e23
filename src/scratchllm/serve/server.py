"""Putting it together: open a model, start the engine, run uvicorn (or hand back a thread).

``run`` is what ``scratchllm serve`` calls: uvicorn catches SIGTERM/SIGINT, stops taking
connections, lets in-flight requests finish for at most ``drain_timeout`` seconds, and then
the app's shutdown closes the engine. ``start_in_thread`` runs the same server in a
background thread on a free port, for tests, notebooks and the benchmark.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from scratchllm.serve.app import ServerConfig, create_app
from scratchllm.serve.engine import Engine


def build_engine(source: str | os.PathLike, *, device: Any = None, dtype: Any = None,
                 max_batch: int = 8, max_queue: int = 64,
                 quantize: str | None = None) -> tuple[Engine, str, dict]:
    """An engine for any model ``open_model`` reads (``quantize="int8"``: int8 linear
    layers; opened ``inference_only``, so CPU bf16 weights are prepacked and float32 ones
    laid out for ``max_batch`` rows per step, the width the engine always decodes), the id
    clients name it by (the directory's name, or the Hub name as given) and the model's
    metadata."""
    from pathlib import Path

    from scratchllm.weights.auto import open_model

    loaded = open_model(source, device=device, dtype=dtype, require_tokenizer=True,
                        quantize=quantize, inference_only=True, decode_rows=max_batch)
    engine = Engine(loaded.model, loaded.tokenizer, loaded.eos_ids, max_batch=max_batch,
                    max_queue=max_queue)
    path = Path(source)
    return engine, (path.resolve().name if path.is_dir() else str(source)), loaded.metadata


def uvicorn_config(app: Any, *, host: str = "127.0.0.1", port: int = 8000,
                   drain_timeout: float = 30.0, log_level: str = "info"):
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          timeout_graceful_shutdown=drain_timeout, lifespan="on",
                          access_log=log_level == "debug")


class _QuietCancelled(logging.Filter):
    """Drops the traceback uvicorn logs for each request (and the app's lifespan) it cancels
    on the way out, past ``drain_timeout`` or at a Ctrl-C during the drain. Its own line
    ("Cancel N running task(s), timeout graceful shutdown exceeded") says what happened;
    a CancelledError traceback after it reads as a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            return False
        text = record.msg if isinstance(record.msg, str) else ""
        return not (text.startswith("Traceback") and text.rstrip().endswith("CancelledError"))


def run(engine: Engine, config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8000,
        drain_timeout: float = 30.0, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT, then drain and return."""
    import uvicorn

    app = create_app(engine, config)
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port,
                                           drain_timeout=drain_timeout, log_level=log_level))
    # uvicorn drains on SIGTERM/SIGINT and then re-raises the signal to the handler it found:
    # this one, so a drained server returns normally (exit 0), not killed by it. It asks the
    # server to exit, as uvicorn's own does: a signal before uvicorn has installed that one
    # (while the event loop starts) stops the server instead of being lost (it served on).
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
                    for sig in (signal.SIGTERM, signal.SIGINT)}
    quiet = _QuietCancelled()
    logging.getLogger("uvicorn.error").addFilter(quiet)
    try:
        server.run()
    finally:
        engine.close()
        logging.getLogger("uvicorn.error").removeFilter(quiet)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class ThreadServer:
    """A server running in a background thread; ``url`` is its base (``http://127.0.0.1:P``)."""

    url: str
    engine: Engine
    server: Any
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.engine.close()


def start_in_thread(engine: Engine, config: ServerConfig, *, drain_timeout: float = 5.0,
                    startup_timeout: float = 30.0) -> ThreadServer:
    """Start a server on a free 127.0.0.1 port in a daemon thread; return once it listens."""
    import uvicorn

    app = create_app(engine, config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, port=port, drain_timeout=drain_timeout,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="scratchllm-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server thread did not start")
        time.sleep(0.01)
    return ThreadServer(f"http://127.0.0.1:{port}", engine, server, thread)
