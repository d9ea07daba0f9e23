"""``scratchllm serve``: an OpenAI-compatible HTTP server with continuous batching."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from scratchllm.cli.generate import add_precision_flags, precision
from scratchllm.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve any model scratchllm opens at /v1/completions, "
        "/v1/chat/completions and /v1/models (OpenAI's API: the openai client, curl, "
        "`scratchllm evaluate judge --api openai`). Concurrent requests are decoded together "
        "in one batch; SIGTERM or Ctrl-C lets running requests finish, then exits.",
    )
    p.add_argument("--model", required=True,
                   help="model or run directory, a Hugging Face directory, or a Hub name")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the id clients send as 'model' (default: the directory's name)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; "
                   "0.0.0.0 opens it to the network, so set --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="sequences decoded together (default 8); each step computes all N "
                   "rows, so a request's output never depends on the others")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests that may wait for a free slot before new ones get HTTP 429 "
                   "(default 64)")
    p.add_argument("--max-request-bytes", type=int, default=4 << 20, metavar="N",
                   help="largest request body accepted, else HTTP 413 (default 4 MiB)")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM or Ctrl-C, how long running requests may take to finish "
                        "(default 30)")
    p.add_argument("--ratings", default=None, metavar="FILE",
                   help="where the web page's compare tab saves ratings: a JSON list in the "
                   "book's preference format (instruction, input, chosen, rejected) that "
                   "`scratchllm finetune dpo --data FILE` reads; ties go to FILE's .ties.json "
                   "sibling (default: runs/ratings/preferences.json). An existing FILE must "
                   "already be such a list")
    p.add_argument("--compare-model", default=None, metavar="DIR",
                   help="a second model served beside --model (any source --model takes), so "
                   "the web page's compare tab can rate one model's answers against the "
                   "other's; clients name it by --compare-model-name")
    p.add_argument("--compare-model-name", default=None, metavar="NAME",
                   help="the id of --compare-model (default: its directory's name)")
    p.add_argument("--prompt-style", default=None,
                   choices=["template", "alpaca", "phi3", "plain"],
                   help="chat prompt format (default: what the model was fine-tuned with, "
                   "else its chat template, else plain User:/Assistant: lines)")
    add_precision_flags(p)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.cli.main import Terminated
    from scratchllm.serve import run as serve

    for name in ("max_batch", "max_request_bytes"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, "
                              f"got {getattr(args, name)}")
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue must be 0 or more, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.drain_timeout < 0:
        raise ConfigError(f"--drain-timeout must be 0 or more, got {args.drain_timeout}")
    if args.api_key is not None and not args.api_key.strip():
        raise ConfigError("--api-key must not be empty")
    from scratchllm.serve.ratings import RatingsFile

    ratings = RatingsFile(args.ratings)  # refuses a wrong file before the model loads
    try:
        engine, config = _load(args, ratings)
    except (KeyboardInterrupt, Terminated) as stop:
        # stopped before it listened: the same exit as a server stopped once up (uvicorn
        # drains, then 0), so a supervisor sees one outcome for "stopped on request"
        why = "interrupted" if isinstance(stop, KeyboardInterrupt) else "stopped by SIGTERM"
        print(f"scratchllm serve: {why} while loading the model; nothing was served",
              file=sys.stderr)
        return 0
    if (warning := open_host_warning(args.host, args.api_key)) is not None:
        print(warning, file=sys.stderr, flush=True)
    print(f"scratchllm serve: {config.model_id} on http://{args.host}:{args.port}/v1 "
          f"(batch {args.max_batch}, queue {args.max_queue}); web page: "
          f"http://{args.host}:{args.port}/, ratings: {ratings.path}", flush=True)
    serve(engine, config, host=args.host, port=args.port, drain_timeout=args.drain_timeout)
    return 0


def _load(args: argparse.Namespace, ratings) -> tuple:
    """(engine, ServerConfig): --model's engine (and --compare-model's, in the config)."""
    from scratchllm.serve import ServerConfig, build_engine
    from scratchllm.utils.device import resolve_device

    device = resolve_device(args.device)
    engine, model_id, metadata = build_engine(
        args.model, device=device, max_batch=args.max_batch, max_queue=args.max_queue,
        **precision(args, device))
    config = ServerConfig(args.model_name or model_id, args.api_key, args.max_request_bytes,
                          metadata, args.prompt_style, ratings)
    if args.compare_model is not None:
        from scratchllm.serve import CompareModel

        other, other_id, other_metadata = build_engine(
            args.compare_model, device=device, max_batch=args.max_batch,
            max_queue=args.max_queue, **precision(args, device))
        config.compare = CompareModel(other, args.compare_model_name or other_id,
                                      other_metadata)
        if config.compare.model_id == config.model_id:
            raise ConfigError(f"--model and --compare-model are both named "
                              f"{config.model_id!r}; give one --model-name or "
                              "--compare-model-name")
    return engine, config


def open_host_warning(host: str, api_key: str | None) -> str | None:
    """A line for a server that others can reach (any address but loopback) with no key."""
    if api_key is not None:
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback:
        return None
    return (f"warning: serving on {host} without --api-key: anyone who can reach this port can "
            "use the model; pass --api-key KEY (clients send it as a Bearer token)")
