"""Where a CPU training step's time goes, operator by operator, with shapes and dtypes.

Not a benchmark with a headline: it times every aten call of a few steps of one
``train_throughput`` contender (a ``TorchDispatchMode`` around each call; CPU calls are
synchronous, so each call's wall time is its cost) and prints the most expensive
(operator, shapes, dtypes) groups per step. torch.profiler's shape grouping gave the same
ranking but inflated single calls by page-fault bursts; this one is cheaper to read.

    python benchmarks/step_ops.py [--precision bf16] [--model scratchllm|nanoGPT|book] [--rows 30]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402
from common import machine_summary  # noqa: E402

from scratchllm.model.config import GPTConfig  # noqa: E402
from scratchllm.utils.heap import retained_heap  # noqa: E402


class OpTimer(TorchDispatchMode):
    """Wall time and count of each aten call, keyed by (operator, first two input shapes, dtypes)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        tensors = [a for a in args if isinstance(a, torch.Tensor)][:2]
        key = (str(func), tuple(tuple(t.shape) for t in tensors),
               tuple(str(t.dtype).removeprefix("torch.") for t in tensors))
        self.seconds[key] += time.perf_counter() - start
        self.calls[key] += 1
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--model", choices=["scratchllm", "nanoGPT", "book"], default="scratchllm")
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps (after 3 warm-up)")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    config = GPTConfig.preset("gpt2-small", context_length=args.context_length, drop_rate=0.1)
    batches = tt.make_batches(config, args.batch_size)
    build = {"scratchllm": lambda: tt.build_ours(config, cpu, False),
             "nanoGPT": lambda: tt.build_nanogpt(config, cpu, False),
             "book": lambda: tt.build_book(config, cpu, False)}[args.model]
    contender = build()
    print(machine_summary(cpu))
    with retained_heap():
        for i in range(3):
            contender.step(*batches[i % len(batches)], args.precision)
        start = time.perf_counter()
        with OpTimer() as timer:
            for i in range(args.steps):
                contender.step(*batches[i % len(batches)], args.precision)
        wall = (time.perf_counter() - start) / args.steps
    total = sum(timer.seconds.values()) / args.steps
    print(f"{contender.name}, {args.precision}, context {args.context_length}, batch "
          f"{args.batch_size}: {wall:.3f} s a step (timed), {total:.3f} s of it in aten calls")
    print(f"{'ms/step':>8} {'share':>6} {'calls':>5}  operator, input shapes, dtypes")
    for key, seconds in timer.seconds.most_common(args.rows):
        per_step = seconds / args.steps
        print(f"{per_step * 1e3:8.1f} {per_step / total:6.1%} {timer.calls[key] // args.steps:5d}  "
              f"{key[0]} {key[1]} {key[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
