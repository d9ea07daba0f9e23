"""``scratchllm serve`` under load: aggregate generated tokens/s and time to first token.

GPT-2 small (124M, random weights, fp32) saved as a model directory is served by
``scratchllm serve`` in its own process; 1, 8 and 32 clients stream /v1/completions at once
(greedy, a ~16-token prompt each, ``--max-tokens`` new tokens). Aggregate tokens/s is every
completion token the clients received divided by the wall time of that round; time to first
token (TTFT) is from sending a request to its first text chunk.

The peer, when it runs here, is ``transformers serve --continuous-batching`` on the same
weights exported with ``scratchllm export --to hf``, measured by the same clients.

Target (issue 9, 2 cores): 8 concurrent clients >= 4x the single-client aggregate.
Run: ``python benchmarks/serve.py [--clients 1,8,32] [--max-tokens 32] [--no-peer]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_flags, machine_summary  # noqa: E402

from scratchllm.model import GPTConfig, GPTModel  # noqa: E402
from scratchllm.tokenizers.gpt2 import GPT2Tokenizer  # noqa: E402
from scratchllm.weights.model_dir import save_model_dir  # noqa: E402

WORDS = ("river stone light window garden morning paper music winter letter engine story "
         "silver market bridge forest").split()


def prompt(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(14))


def lone_generate_tok_s(model_dir: Path, max_tokens: int) -> float:
    """``scratchllm.generate`` on one prompt, no server: what a lone request could get, with
    the model opened as ``scratchllm generate`` opens it (inference-only: one-row layout)."""
    from scratchllm.generate import generate
    from scratchllm.weights.auto import open_model

    loaded = open_model(model_dir, device="cpu", inference_only=True)
    ids = loaded.tokenizer.encode(prompt(0))
    generate(loaded.model, ids, 2)  # warm-up
    start_time = time.perf_counter()
    generate(loaded.model, ids, max_tokens)
    return max_tokens / (time.perf_counter() - start_time)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list[str], url: str, log: Path, timeout: float = 600) -> subprocess.Popen:
    """Start a server process; return once /health (or /v1/models) answers."""
    process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               env=os.environ.copy())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {log.read_text()[-2000:]}")
        for path in ("/health", "/v1/models"):
            try:
                if httpx.get(url + path, timeout=5).status_code == 200:
                    return process
            except httpx.TransportError:
                pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"did not start within {timeout:.0f} s: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


async def one_request(http: httpx.AsyncClient, url: str, model: str, i: int,
                      max_tokens: int) -> tuple[float, int, float]:
    """(time to first text, completion tokens, seconds) of one streamed completion."""
    body = {"model": model, "prompt": prompt(i), "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if choice.get("text") and first is None:
                    first = time.perf_counter() - sent
    return first if first is not None else float("nan"), tokens, time.perf_counter() - sent


async def load_round(url: str, model: str, clients: int, max_tokens: int
                     ) -> tuple[float, list[float], int]:
    """``clients`` requests at once; (aggregate tokens/s, TTFTs, tokens)."""
    async with httpx.AsyncClient(timeout=3600, limits=httpx.Limits(max_connections=64)) as http:
        start_time = time.perf_counter()
        results = await asyncio.gather(*(one_request(http, url, model, i, max_tokens)
                                         for i in range(clients)))
        wall = time.perf_counter() - start_time
    tokens = sum(r[1] for r in results)
    return tokens / wall, [r[0] for r in results], tokens


def measure(name: str, url: str, model: str, levels: list[int], max_tokens: int
            ) -> dict[int, tuple[float, list[float], int]]:
    asyncio.run(load_round(url, model, 1, 4))  # warm-up
    out = {}
    for clients in levels:
        out[clients] = asyncio.run(load_round(url, model, clients, max_tokens))
        tok_s, ttft, tokens = out[clients]
        print(f"  ... {name}, {clients} clients: {tok_s:.1f} tok/s ({tokens} tokens), "
              f"TTFT median {statistics.median(ttft):.2f} s", file=sys.stderr, flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of every server (OMP/MKL_NUM_THREADS; default: "
                        "torch's own). On a busy machine 1 avoids threads waiting on each other")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    # the model directories (about 1.3 GB with the peer's export) go when the run ends
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> int:
    levels = [int(x) for x in args.clients.split(",")]
    torch.manual_seed(123)
    model_dir = work / "gpt2-124m"
    save_model_dir(model_dir, GPTModel(GPTConfig.preset("gpt2-small")), GPT2Tokenizer())
    print(f"machine: {machine_summary()}; CPU flags: {cpu_flags()}")
    print(f"workload: gpt2-small 124M random weights fp32; prompts ~16 tokens; "
          f"{args.max_tokens} new tokens each, greedy, streamed; --max-batch {args.max_batch}; "
          f"server threads: {args.threads or 'torch default'}")

    results: dict[str, dict] = {}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ours = start([sys.executable, "-m", "scratchllm", "serve", "--model", str(model_dir),
                  "--port", str(port), "--max-batch", str(args.max_batch)], url,
                 work / "ours.log")
    try:
        results["scratchllm serve"] = measure("scratchllm serve", url, model_dir.name, levels,
                                              args.max_tokens)
    finally:
        stop(ours)

    lone = lone_generate_tok_s(model_dir, args.max_tokens)
    print(f"  ... scratchllm generate, one prompt, no server: {lone:.1f} tok/s",
          file=sys.stderr, flush=True)
    peer_note = "not run (--no-peer)"
    if not args.no_peer:
        peer_note = run_peer(work, model_dir, levels, args.max_tokens, results)

    print(f"{'server':<22} {'clients':>7} {'tok/s':>8} {'TTFT med':>9} {'TTFT max':>9}")
    for name, by_level in results.items():
        for clients, (tok_s, ttft, _) in by_level.items():
            print(f"{name:<22} {clients:>7} {tok_s:>8.1f} {statistics.median(ttft):>8.2f}s "
                  f"{max(ttft):>8.2f}s")
    print(f"reference: scratchllm generate on one prompt, no server: {lone:.1f} tok/s "
          f"(a lone request in the server pays for all --max-batch {args.max_batch} rows)")
    print(f"peer: {peer_note}")
    ours_r = results["scratchllm serve"]
    if 1 in ours_r and 8 in ours_r:
        print(f"scaling: 8 clients = {ours_r[8][0] / ours_r[1][0]:.2f}x the single-client "
              "aggregate (target >= 4x)")
    headline = max(levels)
    peer = results.get("transformers serve", {}).get(headline)
    value = ours_r[headline][0]
    tail = (f"transformers serve: {peer[0]:.1f}, ratio {value / peer[0]:.2f}" if peer
            else "transformers serve: n/a")
    print(f"serve_aggregate_tok_s_{headline}_clients: {value:.1f} ({tail})")
    return 0


def run_peer(work: Path, model_dir: Path, levels: list[int], max_tokens: int,
             results: dict) -> str:
    """``transformers serve`` on the same weights, or why it could not run."""
    hf_dir = work / "gpt2-124m-hf"
    export = subprocess.run([sys.executable, "-m", "scratchllm", "export", str(model_dir),
                             str(hf_dir), "--to", "hf"], capture_output=True, text=True)
    if export.returncode:
        return f"export failed: {export.stderr.strip()[-300:]}"
    cli = Path(sys.executable).with_name("transformers")
    if not cli.exists():
        return "transformers CLI not installed"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(cli), "serve", str(hf_dir), "--continuous-batching", "--device", "cpu",
           "--dtype", "float32", "--port", str(port), "--host", "127.0.0.1"]
    try:
        peer = start(cmd, url, work / "peer.log")
    except RuntimeError as err:
        return f"transformers serve did not start: {err}"
    try:
        results["transformers serve"] = measure("transformers serve", url, str(hf_dir), levels,
                                                max_tokens)
        return "transformers serve --continuous-batching, same weights (scratchllm export --to hf)"
    except Exception as err:  # noqa: BLE001 - report why, keep our numbers
        return f"transformers serve failed: {type(err).__name__}: {str(err)[:300]}"
    finally:
        stop(peer)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
