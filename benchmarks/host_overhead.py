"""Host (Python + dispatch) time of one eager training step on the GPU code paths: ours beside nanoGPT.

An eager training step on a GPU only queues kernels; when queuing them takes longer than the
GPU runs them, the GPU waits on Python. This measures the queuing alone, on the CPU: the GPT-2
124M layout (12 layers, 12 heads) at tiny widths and 4 positions, so the kernels themselves cost
next to nothing, under bf16 autocast as on a GPU. Our model takes CPU-only shortcuts (its own
dropout masks, the fused chunked loss); they are switched off here so that both models run the
code a CUDA step runs, and nanoGPT gets the fused AdamW it uses on CUDA. Contenders and steps are ``train_throughput``'s (forward, backward, fused
AdamW, one host sync for the loss), interleaved round by round.

    python benchmarks/host_overhead.py [--rounds 5] [--steps 50] [--nanogpt DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402
from common import machine_summary, median  # noqa: E402

import scratchllm.model.dropout as dropout_module  # noqa: E402
import scratchllm.model.loss as loss_module  # noqa: E402
from scratchllm.model.config import GPTConfig  # noqa: E402


def use_gpu_code_paths() -> None:
    """Make our CPU step take the branches a CUDA step takes: ``F.dropout`` and the plain loss."""
    dropout_module.cheap_mask_applies = lambda x, p: False
    loss_module.plain_loss_pays = lambda device, positions, vocab_size: True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per round")
    parser.add_argument("--nanogpt", type=Path, default=tt.NANOGPT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    use_gpu_code_paths()
    cpu = torch.device("cpu")
    config = GPTConfig(vocab_size=64, context_length=4, emb_dim=48, n_heads=12, n_layers=12,
                       drop_rate=0.1, qkv_bias=True)
    batches = tt.make_batches(config, 1)
    contenders = [tt.build_ours(config, cpu, False), tt.build_nanogpt(config, cpu, False, args.nanogpt,
                                                                         optimizer_device="cuda")]
    print(machine_summary(cpu))
    print(f"workload: GPT-2 124M layout at width {config.emb_dim}, {config.context_length} positions, "
          f"batch 1, bf16 autocast, 1 thread; GPU code paths; {args.rounds} rounds x {args.steps} steps")
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for contender in contenders:  # warm-up
        for i in range(5):
            contender.step(*batches[i % len(batches)], "bf16")
    for round_index in range(args.rounds):
        order = contenders if round_index % 2 == 0 else contenders[::-1]
        for contender in order:
            start = time.perf_counter()
            for i in range(args.steps):
                contender.step(*batches[i % len(batches)], "bf16")
            times[contender.name].append((time.perf_counter() - start) / args.steps * 1e3)
    for name, values in times.items():
        print(f"{name:12s} median {median(values):6.2f} ms/step  "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")
    ours, peer = median(times["scratchllm"]), median(times["nanoGPT"])
    print(f"host_ms_per_step: {ours:.2f} (nanoGPT: {peer:.2f}, ratio {ours / peer:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
