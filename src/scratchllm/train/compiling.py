"""``torch.compile`` for training: the whole model, or one compiled transformer block (regional).

On a CPU, eager training spends a large share of each step outside the matmuls: LayerNorm,
GELU, dropout masks, softmax, residual adds and layout copies, each a pass over memory in
both directions. Inductor fuses them into a few loops per block. Two ways, chosen by the
training config's ``compile``:

* ``"model"`` (or ``true``): ``torch.compile`` of the whole model, as it was before;
  forward and backward of everything in one graph, the head's logits included.
* ``"blocks"``: regional compilation. Every block of ``model.trf_blocks`` has the same code
  and shapes, so one compiled function serves them all (one compile, not one per layer),
  and everything else stays eager: the chunked head + loss (``model.loss``), evaluation
  under ``no_grad`` and decoding with a KV cache (samples mid-run) never wait for a compile.

Measured on a 2-core Xeon (AVX-512) at GPT-2 small, context 256, batch 2, fp32
(benchmarks/RESULTS.md, "train_throughput, regional compilation"): ``blocks`` ran 0.90x the
eager step and used 1.25x its CPU time at one thread (where inductor loses was not
profiled; eager already has cheap dropout masks and a written-out attention), so eager
stays the default; the switch is there for devices and shapes where
inductor's fusion wins, and the benchmark keeps measuring it.

Dropout inside a compiled region draws inductor's in-kernel random numbers (``model.dropout``
hands over to ``F.dropout`` there), seeded from PyTorch's generator at each call: a seed and
a checkpoint still replay a run exactly, but the masks differ from the eager ones.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn

from scratchllm.errors import ConfigError

_compiled_block: Callable[..., torch.Tensor] | None = None


def compile_mode(value: Any) -> str:
    """``none``, ``model`` or ``blocks`` for a config's ``compile`` value (bools allowed)."""
    if value is True:
        return "model"
    if value is False:
        return "none"
    return value


def _block_call(block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    return type(block).forward(block, *args)


def _routed_forward(block: nn.Module, *args: torch.Tensor, mask: torch.Tensor | None = None,
                    cache: Any = None, layer: int = 0) -> torch.Tensor:
    """A block's forward: compiled for cache-less training calls, eager for everything else."""
    if cache is None and mask is None and torch.is_grad_enabled():
        return _compiled_block(block, *args)
    return type(block).forward(block, *args, mask=mask, cache=cache, layer=layer)


def compile_blocks(model: nn.Module) -> int:
    """Route the training calls of each of ``model.trf_blocks`` through one compiled forward.

    The block's own ``forward`` is left alone (and its weights, names and state dict): an
    instance-level ``forward`` picks the path. Returns the number of blocks routed.
    """
    global _compiled_block
    blocks = getattr(model, "trf_blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ConfigError(f"compile: blocks needs a model with transformer blocks in trf_blocks; "
                          f"{type(model).__name__} has none: use compile: true")
    if _compiled_block is None:
        _compiled_block = torch.compile(_block_call)
    for block in blocks:
        # a partial, not a closure: a deep copy of the model then routes its own blocks
        block.forward = functools.partial(_routed_forward, block)
    return len(blocks)


def compile_for_training(model: nn.Module, wrapped: nn.Module, mode: Any) -> nn.Module:
    """The module a training step calls: ``wrapped`` (``model`` under DDP/FSDP, or itself)
    with ``mode`` applied (see the module docstring)."""
    mode = compile_mode(mode)
    if mode == "blocks":
        compile_blocks(model)
        return wrapped
    if mode == "model":
        return torch.compile(wrapped)
    return wrapped
