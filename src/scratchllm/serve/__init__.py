"""An OpenAI-compatible HTTP server with continuous batching (``scratchllm serve``).

* ``engine``: the scheduler thread that owns the model; requests join and leave the batch
  between decode steps.
* ``slots``: one KV cache per sequence and the batched decode step over them, built so a
  request's output does not depend on what else is running.
* ``sequence``: one choice being generated (sampling, logprobs, stop strings, events).
* ``app`` / ``schemas`` / ``responses`` / ``sse``: the FastAPI routes, request checks,
  OpenAI response shapes and server-sent events.
* ``server``: ``run`` (the command) and ``start_in_thread`` (tests, notebooks, benchmarks).
* ``page`` / ``ratings`` / ``static/``: the web page at ``/`` (chat, compare & rate, win
  rates, attention heatmap) and its ratings file of preference pairs.
"""

from scratchllm.serve.app import CompareModel, ServerConfig, create_app
from scratchllm.serve.engine import Engine, EngineClosedError, QueueFullError
from scratchllm.serve.server import ThreadServer, build_engine, run, start_in_thread

__all__ = ["CompareModel", "Engine", "EngineClosedError", "QueueFullError", "ServerConfig",
           "ThreadServer", "build_engine", "create_app", "run", "start_in_thread"]
