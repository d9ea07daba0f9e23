"""Where a GPU training step's time goes: ours beside nanoGPT, by torch.profiler.

Not a benchmark with a headline: it prints, for each model, the operators that took the most
GPU time over a few bf16 steps (after warm-up), so two runs can be read side by side. It
reuses ``train_throughput``'s contenders, so the models, optimizers and steps are exactly the
ones that benchmark times.

    python benchmarks/cuda_profile.py [--compile] [--nanogpt DIR] [--rows 28]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402

from scratchllm.model.config import GPTConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--nanogpt", type=Path, default=tt.NANOGPT)
    parser.add_argument("--context-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 3 warm-up)")
    parser.add_argument("--rows", type=int, default=28, help="operators shown per model")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = GPTConfig.preset("gpt2-small", context_length=args.context_length, drop_rate=0.1)
    batches = tt.make_batches(config, args.batch_size)
    builders = {"scratchllm": lambda: tt.build_ours(config, device, args.compile),
                "nanoGPT": lambda: tt.build_nanogpt(config, device, args.compile, args.nanogpt)}
    sort_key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    for name, build in builders.items():
        contender = build()
        for i in range(3):
            contender.step(*batches[i % len(batches)], "bf16")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for i in range(args.steps):
                contender.step(*batches[i % len(batches)], "bf16")
            if device.type == "cuda":
                torch.cuda.synchronize()
        print(f"===== {name} ({args.steps} bf16 steps, compile={args.compile})")
        print(prof.key_averages().table(sort_by=sort_key, row_limit=args.rows,
                                        max_name_column_width=70))
        del contender
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
