"""What a KV-cached decode step costs OUTSIDE its linear layers (issue 11).

Decoding one token reads every weight once, so the linear layers are most of a step; the
rest (attention over the cache, norms, GELU, residual adds, the KV-cache writes, the
embedding gather, the greedy pick, Python and PyTorch's per-op dispatch) is a fixed cost per
token that bounds what faster linear layers can buy. torch.profiler inflates it (a few us of
its own per op, ~700 ops a token), so it is timed here without a profiler: the same GPT-2
124M model (random weights, laid out as ``scratchllm generate`` runs it: fp32 transposed,
bf16 prepacked, int8 quantized) decodes greedily

* whole: as it is;
* outside the linears: every linear layer replaced by a stand-in returning a fixed tensor of
  the right shape (so attention, norms and the rest run on real shapes and cache lengths);

alternating round by round, each timed by wall clock and by process CPU time (the CPU time
is steadier on a shared machine). Run: ``python benchmarks/decode_overhead.py [--threads 2]
[--tokens 100] [--rounds 3] [--kinds fp32,bf16,int8]``; the last line reads
``decode_overhead_ms: X (whole step fp32: Y, share Z)``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_average, machine_summary  # noqa: E402

from scratchllm.generate import generate  # noqa: E402
from scratchllm.model import GPTConfig, GPTModel  # noqa: E402
from scratchllm.model.decode_layout import prepare_decoding  # noqa: E402
from scratchllm.model.quantize import cpu_flags, quantize_model  # noqa: E402

PROMPT_LEN, SEED = 10, 123


class FixedOutput(nn.Module):
    """Stands in for a linear layer: returns (..., out_features) values without a matmul."""

    def __init__(self, out_features: int, dtype: torch.dtype, rows: int = 64) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(out_features)
        self.out_features = out_features
        self.values = (torch.randn(rows * out_features, generator=gen) * 0.02).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        return self.values[: rows * self.out_features].view(*x.shape[:-1], self.out_features)


def without_linears(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` with every module that has ``out_features`` (dense, packed or int8 linear
    layers) replaced by a ``FixedOutput``; embeddings and norms stay."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            out = getattr(child, "out_features", None)
            if isinstance(out, int) and not isinstance(child, nn.Embedding):
                setattr(parent, name, FixedOutput(out, dtype))
    return model


def decoders(kinds: list[str]) -> dict[str, nn.Module]:
    torch.manual_seed(SEED)
    base = GPTModel(GPTConfig.preset("gpt2-small", drop_rate=0.0, tie_weights=True,
                                     qkv_bias=True)).eval()
    def laid_out(kind: str) -> nn.Module:  # as generate runs it (packed layers can't be copied)
        model = copy.deepcopy(base)
        if kind == "bf16":
            model = model.to(torch.bfloat16)
        elif kind == "int8":
            model = quantize_model(model, "int8")
        prepare_decoding(model, 1)
        return model

    models = {}
    for kind in kinds:
        dtype = torch.bfloat16 if kind == "bf16" else torch.float32
        models[f"{kind} whole"] = laid_out(kind)
        models[f"{kind} outside linears"] = without_linears(laid_out(kind), dtype)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default="fp32,bf16,int8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kinds = args.kinds.split(",")
    print(f"machine: {machine_summary()}")
    print("cpu flags: " + ", ".join(f"{k}={'yes' if v else 'no'}"
                                    for k, v in cpu_flags().items()))
    print(f"workload: GPT-2 124M shape (random weights), batch 1, {PROMPT_LEN}-token prompt, "
          f"{args.tokens} new greedy tokens, {args.threads} threads, {args.rounds} rounds "
          "(median)")
    prompt = torch.randint(0, 50257, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    models = decoders(kinds)
    wall = {name: [] for name in models}
    cpu = {name: [] for name in models}
    for model in models.values():
        generate(model, prompt, 8)  # warm-up
    for r in range(args.rounds):
        for name, model in models.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            generate(model, prompt, args.tokens)
            wall[name].append((time.perf_counter() - start) * 1000 / args.tokens)
            cpu[name].append((time.process_time() - start_cpu) * 1000 / args.tokens)
            print(f"  ... round {r + 1}/{args.rounds} {name}: {wall[name][-1]:.2f} ms/token",
                  file=sys.stderr, flush=True)
    print(f"\n{'decoder':<26}{'ms/token':>10}{'cpu ms/token':>14}")
    for name in models:
        print(f"{name:<26}{statistics.median(wall[name]):>10.2f}"
              f"{statistics.median(cpu[name]):>14.2f}")
    print(f"load average after: {load_average()}")
    kind = kinds[0]
    outside = statistics.median(wall[f"{kind} outside linears"])
    whole = statistics.median(wall[f"{kind} whole"])
    print(f"decode_overhead_ms: {outside:.2f} (whole step {kind}: {whole:.2f}, share "
          f"{outside / whole:.2f})")


if __name__ == "__main__":
    main()
