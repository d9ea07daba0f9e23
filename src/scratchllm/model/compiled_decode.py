"""``torch.compile`` for decoding: the one-token KV-cached step as one inductor graph.

A decode step of GPT-2 124M runs ~700 small ops besides its 49 matmuls (layer norms, GELU,
residual adds, attention glue, KV-cache writes), ~2.7 ms of CPU time a token in eager
PyTorch (RESULTS.md, "decode, outside the linear layers"). Inductor fuses them into a few
C++ loops. ``compile_decoding(model)`` routes the calls that are one such step (batch 1, one
new token, a ``KVCache`` holding earlier positions, no padding mask, no gradients) through
one compiled forward; everything else (prefill, batches, training, the uncached path) runs
the model's own eager forward, so outputs and state dicts are as before.

No recompiles as the cache grows: the forward is compiled with ``dynamic=True``, so the
cache's length (and its buffers' size) are symbols, not constants; one graph serves every
position and every cache size. int8 layers and oneDNN-packed (bf16) layers stay inside the
graph as one opaque operator each (``scratchllm.model.linear_op``); float32 layers become
inductor's own matmul calls. ``compile_decoding`` compiles at once on a dummy prompt (tens
of seconds on a small CPU; inductor's on-disk cache makes later processes faster), so no
answer waits for it mid-way.
"""

from __future__ import annotations

import functools
import itertools
import shutil
import time
import types
from typing import Any, Callable

import torch
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.model.inputs import model_device
from scratchllm.model.kv_cache import KVCache

COMPILE_DEVICES = ("cpu",)
CXX_COMPILERS = ("g++", "c++", "clang++")
_STEPS = itertools.count()
# Inductor's defaults (RESULTS.md, "decode, compiled": ``freezing`` did not apply here, the
# weights stay graph inputs; ``cpp_wrapper`` doubled the compile time for no steady gain), less
# its size and alignment asserts: at every call they check each opaque linear's output against
# what its fake kernel promised. tests/model/test_compiled_decode.py compiles with them on, so
# the fake kernels are checked there; decoding skips them: bf16 +4-5% a token (GPT-2 124M,
# 8 interleaved rounds of 60 tokens; int8 and fp32 within the noise).
DEFAULT_OPTIONS: dict[str, Any] = {"size_asserts": False, "alignment_asserts": False}


def check_compile(device: torch.device | str | None, decode_rows: int = 1) -> None:
    """Refuse a combination ``compile_decoding`` cannot serve, before any weight is read."""
    kind = torch.device(device or "cpu").type
    if kind not in COMPILE_DEVICES:
        raise ConfigError(f"--compile compiles CPU decoding only, not {kind}; drop --compile "
                          "(or use --device cpu)")
    if decode_rows != 1:
        raise ConfigError("--compile compiles one-row decoding (generate, chat); batched "
                          "decoding stays eager: drop --compile")
    if not any(shutil.which(name) for name in CXX_COMPILERS):
        raise ConfigError("--compile needs a C++ compiler to build inductor's kernels, and "
                          f"none of {', '.join(CXX_COMPILERS)} is on PATH; install g++ (e.g. "
                          "apt-get install g++) or drop --compile")


def _step(model: nn.Module, token_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    return type(model).forward(model, token_ids, cache=cache, last_only=True)


def _own_step() -> Callable[..., torch.Tensor]:
    """A copy of ``_step`` with a code object of its own. Dynamo keeps its compiled graphs
    per code object, guarded by what they were traced with: sharing one between models
    would count every model against dynamo's recompile limit (8), and with ``freezing`` a
    graph's weights are constants of the model it was traced on."""
    number = next(_STEPS)
    code = _step.__code__.replace(co_name=f"_decode_step_{number}")
    return types.FunctionType(code, _step.__globals__, code.co_name)


def _mark_cache(cache: KVCache) -> None:
    """Only the buffers' length grows: batch, heads and head size are constants, so they
    can never be taken for the same symbol as the cache length (dynamo's duck sizing would
    then guard on that equality and compile again one token later)."""
    for buffer in (*cache._keys, *cache._values):
        if buffer is not None:
            for dim in (0, 1, 3):
                torch._dynamo.mark_static(buffer, dim)
    cache.marked_static = True


def _is_decode_step(model: nn.Module, token_ids: torch.Tensor, cache: Any,
                    attention_mask: Any, position_ids: Any, return_hidden: bool) -> bool:
    return (type(cache) is KVCache and attention_mask is None and position_ids is None
            and not return_hidden and not model.training and not torch.is_grad_enabled()
            and isinstance(token_ids, torch.Tensor) and token_ids.shape == (1, 1)
            and 0 < cache.length < model.config.context_length
            # a spare position after this one: the step that fills the cache's last
            # position reads the whole buffer, a contiguous view (another graph); it stays
            # eager, and ``generate`` sizes its cache so that it never comes
            and cache.length + 1 < cache.max_length)


def _routed_forward(model: nn.Module, compiled: Callable[..., torch.Tensor],
                    token_ids: torch.Tensor, *, cache: Any = None, attention_mask: Any = None,
                    position_ids: Any = None, last_only: bool = False,
                    return_hidden: bool = False) -> torch.Tensor:
    """The model's forward: compiled for a one-token decode step, eager for anything else."""
    if _is_decode_step(model, token_ids, cache, attention_mask, position_ids, return_hidden):
        from scratchllm.model.inputs import check_token_ids

        check_token_ids(token_ids, model.config.vocab_size)  # skipped inside compiled code
        if not getattr(cache, "marked_static", False):
            _mark_cache(cache)
        # a fresh (1, 1) tensor: a column of the decode loop's token buffer has that buffer's
        # row stride, which changes with every call's length (a recompile)
        return compiled(model, token_ids.clone(memory_format=torch.contiguous_format), cache)
    return type(model).forward(model, token_ids, cache=cache, attention_mask=attention_mask,
                               position_ids=position_ids, last_only=last_only,
                               return_hidden=return_hidden)


def compile_decoding(model: nn.Module, *, warm_up: bool = True, **options: Any) -> float:
    """Route ``model``'s one-token KV-cached steps through one ``torch.compile``d forward, in
    place (an instance-level ``forward``; weights, names and state dict unchanged).

    ``options`` are inductor settings (``cpp_wrapper=True``, ...) over ``DEFAULT_OPTIONS``.
    ``warm_up`` compiles now, on a dummy 3-token prompt, instead of at the first decode step;
    returns the seconds that took (0.0 without warm-up), also kept as
    ``model.decode_compile_seconds``."""
    from scratchllm.model.cpu_linear import PackedLinear
    from scratchllm.model.int8_linear import Int8Linear
    from scratchllm.model.linear_op import register

    for module in model.modules():
        if isinstance(module, (Int8Linear, PackedLinear)):
            register(module)
    compiled = torch.compile(_own_step(), dynamic=True,
                             options={**DEFAULT_OPTIONS, **options} or None)
    # a partial, not a closure, as train.compiling does for blocks
    model.forward = functools.partial(_routed_forward, model, compiled)
    seconds = _warm_up(model) if warm_up else 0.0
    model.decode_compile_seconds = seconds
    return seconds


def _warm_up(model: nn.Module) -> float:
    """One compiled step after a 3-token prefill (not 1: sizes 0 and 1 are constants to
    dynamo, so a 1-token cache would compile a graph for that length only)."""
    if model.config.context_length < 5:
        return 0.0
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            device = model_device(model)
            cache = model.new_cache(5)
            model(torch.zeros((1, 3), dtype=torch.long, device=device), cache=cache)
            model(torch.zeros((1, 1), dtype=torch.long, device=device), cache=cache)
    finally:
        model.train(was_training)
    return time.perf_counter() - started


__all__ = ["COMPILE_DEVICES", "DEFAULT_OPTIONS", "check_compile", "compile_decoding"]
