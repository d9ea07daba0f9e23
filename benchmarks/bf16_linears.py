"""Which bf16 linear kernel decodes fastest, timed inside a real decode (issue 11: bf16 >= 1.6x fp32).

A decode step reads every weight once (GPT-2 124M: 497 MB in float32, 248 MB in bf16), so a
kernel timed alone, its weight sitting in the 2-4 MiB L2, says little: here every contender
runs ``scratchllm.generate`` on the GPT-2 124M shape (random weights, batch 1, 10-token
prompt), the contenders alternating round by round, best round kept. Contenders:

* ``fp32``: what ``generate`` runs (``prepare_decoding``: weights transposed for MKL's sgemv);
* ``bf16 packed``: what ``generate --dtype bf16`` runs (oneDNN prepacked, laid out for 1 row);
* ``bf16 packed, 16-row layout``: the same op, the weight blocked for 16 rows (oneDNN then
  blocks 32 output columns instead of 64);
* ``bf16 plain``: ``nn.Linear`` in bf16 (oneDNN matmul from the dense (out, in) weight);
* ``bf16 packed, GELU fused``: the packed layers with GPT-2's tanh GELU as a oneDNN post-op
  of ``fc1`` (one op fewer per block; outputs differ from plain bf16 by at most one bf16 step,
  because the GELU reads the float32 sum instead of the bf16-rounded one).

Besides tokens/s it prints each contender's time inside its linear layers per token (forward
hooks, one extra decode each, not part of the tok/s figures). Run it under the timing lock:
``flock /var/tmp/s5/timing.lock .venv/bin/python benchmarks/bf16_linears.py`` (about 2 minutes
with the defaults on a quiet 2-core machine). The last line reads
``bf16_decode_tok_s: X (scratchllm fp32: Y, ratio R)`` for ``bf16 packed``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_average, machine_summary  # noqa: E402

from scratchllm.generate import generate  # noqa: E402
from scratchllm.model import GPTConfig, GPTModel  # noqa: E402
from scratchllm.model.cpu_linear import PackedLinear, packed_unavailable  # noqa: E402
from scratchllm.model.decode_layout import prepare_decoding  # noqa: E402
from scratchllm.model.layers import GELU, FeedForward  # noqa: E402
from scratchllm.model.quantize import cpu_flags  # noqa: E402

PROMPT_LEN, SEED = 10, 123


class GeluFusedLinear(PackedLinear):
    """A packed bf16 layer computing GELU(x W^T + b) (tanh form) in oneDNN's epilogue."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "gelu", [],
                                                  "tanh")


def gpt2_small() -> GPTModel:
    torch.manual_seed(SEED)
    return GPTModel(GPTConfig.preset("gpt2-small", drop_rate=0.0, tie_weights=True,
                                     qkv_bias=True)).eval()


def _swap_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, make(child))
    return model


def _gelu_fused(model: nn.Module) -> nn.Module:
    """Pack like ``prepare_decoding``, then fold each block's GELU into its ``fc1``."""
    for ff in [m for m in model.modules() if isinstance(m, FeedForward)]:
        if isinstance(ff.act, GELU) and type(ff.fc1) is nn.Linear:
            ff.fc1, ff.act = GeluFusedLinear(ff.fc1), nn.Identity()
    prepare_decoding(model, 1)
    return model


def contenders_for(base: GPTModel) -> dict[str, nn.Module]:
    fp32 = copy.deepcopy(base)
    prepare_decoding(fp32, 1)
    models: dict[str, nn.Module] = {"fp32": fp32}
    bf16 = lambda: copy.deepcopy(base).to(torch.bfloat16)  # noqa: E731
    packed = bf16()
    prepare_decoding(packed, 1)
    models["bf16 packed"] = packed
    if packed_unavailable(torch.bfloat16) is None:
        models["bf16 packed, 16-row layout"] = _swap_linears(bf16(), lambda l: PackedLinear(l, 16))
        models["bf16 packed, GELU fused"] = _gelu_fused(bf16())
    models["bf16 plain"] = bf16()
    return models


def linear_ms_per_token(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Wall time spent inside the model's linear layers per generated token (hooks)."""
    starts: list[float] = []
    total = [0.0]

    def before(*_) -> None:
        starts.append(time.perf_counter())

    def after(*_) -> None:
        total[0] += time.perf_counter() - starts.pop()

    hooks = []
    for module in model.modules():
        if isinstance(module, (nn.Linear, PackedLinear)):
            hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        generate(model, prompt, new_tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return 1000 * total[0] / new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_summary())
    print("cpu flags: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu_flags().items()))
    models = contenders_for(gpt2_small())
    prompt = torch.randint(0, 50257, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(SEED))
    reference = generate(models["bf16 plain"], prompt, args.new_tokens)
    best = {name: math.inf for name in models}
    for model in models.values():
        generate(model, prompt, 8)  # warm-up: thread pool, oneDNN primitives
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            generate(model, prompt, args.new_tokens)
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"workload: GPT-2 124M shape (random weights), batch 1, {PROMPT_LEN}-token prompt, "
          f"{args.new_tokens} new greedy tokens, {args.threads} threads, best of {args.rounds}")
    print(f"{'decoder':30s} {'tok/s':>7s} {'ms/token':>9s} {'linears ms/token':>17s}  vs fp32  "
          "tokens = plain bf16")
    for name, model in models.items():
        same = float((generate(model, prompt, args.new_tokens) == reference).float().mean())
        linear_ms = linear_ms_per_token(model, prompt, args.new_tokens)
        seconds = best[name]
        print(f"{name:30s} {args.new_tokens / seconds:7.1f} {1000 * seconds / args.new_tokens:9.2f} "
              f"{linear_ms:17.2f}  {best['fp32'] / seconds:5.2f}x  {100 * same:.0f}%")
    print(f"load average after: {load_average()}")
    fp32, bf16 = args.new_tokens / best["fp32"], args.new_tokens / best["bf16 packed"]
    print(f"bf16_decode_tok_s: {bf16:.1f} (scratchllm fp32: {fp32:.1f}, ratio {bf16 / fp32:.2f})")


if __name__ == "__main__":
    main()
