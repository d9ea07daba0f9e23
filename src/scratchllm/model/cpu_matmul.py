"""One door for training's CPU float32 matrix products: MKL or oneDNN, chosen by CPU vendor.

PyTorch sends a CPU float32 ``torch.mm`` to MKL. MKL is Intel's library, and on other
vendors' CPUs it takes a generic path: on an AMD EPYC (Zen 5, 2 threads) it reached 200-218
GFLOP/s on GPT-2 124M's training shapes (512 x 768 by 768 x 3072 and their gradients) and
219 on a 2048^2 square, where oneDNN, the other matmul library inside PyTorch, reached
415-470 and 493 with AVX-512 (the vocabulary head: 340 against 184 forward, 230 against 182
for its weight gradient). So on AMD CPUs these products go through oneDNN's linear
(``torch.ops.mkldnn._linear_pointwise`` with a dense weight, which it reorders per call);
on Intel CPUs, where MKL is tuned, and wherever the op is missing, through ``torch.mm``.
The sums are the same up to the order of float32 additions (~1e-7 relative).

``SCRATCHLLM_CPU_MATMUL`` overrides the choice: ``mkl`` (``torch.mm`` always), ``onednn``
(wherever the op runs), ``auto`` (the default, by vendor). One-row float32 decoding
(``model.decode_layout``) follows the same choice.

Two ways in. ``mm``, ``addmm``, ``addmm_`` and ``linear`` serve the training pass's own
``torch.autograd.Function``s (``model.causal_attention``, ``model.feature_major``,
``model.loss``), which run without autograd, so they need no backward of their own. Every
other linear layer (GPT's attention output, every Llama/Qwen3 projection, LoRA's frozen base,
a classifier's head) is an ``nn.Linear`` calling ``F.linear``: inside ``onednn_linears()``,
which the training loops enter around their steps (and ``evaluate``/``classify`` around
their forward passes), those calls go through ``OneDNNLinear``, whose backward uses oneDNN
too. Compiled models are left to inductor. Decoding does not enter it: its layers are laid
out once at load (``model.decode_layout``), and the mode's per-op Python hook would cost a
decode step more than it saves.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

from scratchllm.errors import ConfigError

ENV = "SCRATCHLLM_CPU_MATMUL"
CHOICES = ("auto", "onednn", "mkl")


def cpu_vendor() -> str | None:
    """The x86 vendor string ("GenuineIntel", "AuthenticAMD"), or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip() or None
    except OSError:
        pass
    import platform  # Windows names the vendor here ("AMD64 Family 25 ..., AuthenticAMD")

    for vendor in ("GenuineIntel", "AuthenticAMD"):
        if vendor in platform.processor():
            return vendor
    return None


@functools.cache
def _onednn_runs() -> bool:
    """oneDNN's linear with a dense float32 weight exists here and gives a right answer."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or not hasattr(ops, "_linear_pointwise"):
        return False
    try:
        out = ops._linear_pointwise(torch.ones(2, 4), torch.ones(3, 4), None, "none", [], "")
    except RuntimeError:
        return False
    return out.tolist() == [[4.0] * 3] * 2


@functools.cache
def _amd() -> bool:
    return cpu_vendor() == "AuthenticAMD"


def matmul_library() -> str:
    """"onednn" or "mkl": which library the helpers below use for CPU float32 products."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"{ENV} must be one of {', '.join(CHOICES)}, got {choice!r}; "
                          f"unset it to let scratchllm choose by CPU")
    wanted = choice == "onednn" or (choice == "auto" and _amd())
    return "onednn" if wanted and _onednn_runs() else "mkl"


def _onednn(*tensors: torch.Tensor) -> bool:
    return (all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
            and matmul_library() == "onednn")


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if x.dim() == 2:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    # oneDNN returns a view for other ranks; ``F.linear`` returns a tensor of its own (as
    # matmul does, by ``_unsafe_view``), and FSDP2 warns about a model whose output is a view
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias,
                                             "none", [], "")
    return torch.ops.aten._unsafe_view(out, (*x.shape[:-1], out.shape[-1]))


def mm(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` for 2-D ``a`` and ``b`` (``torch.mm``), written to ``out`` when given."""
    if not _onednn(a, b):
        return torch.mm(a, b, out=out)
    product = _linear(a, b.t(), None)
    return product if out is None else out.copy_(product)


def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``bias + a @ b`` (``torch.addmm``; ``bias`` broadcasts over the product)."""
    if not _onednn(a, b):
        return torch.addmm(bias, a, b)
    if bias.dim() == 1:  # one value per output column: oneDNN adds it in the same pass
        return _linear(a, b.t(), bias)
    return _linear(a, b.t(), None).add_(bias)


def addmm_(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``target += a @ b`` in place (``Tensor.addmm_``)."""
    if not _onednn(a, b):
        return target.addmm_(a, b)
    return target.add_(_linear(a, b.t(), None))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    """``x @ weight.T + bias`` (``F.linear``) for any leading dimensions of ``x``."""
    if not _onednn(x, weight):
        return torch.nn.functional.linear(x, weight, bias)
    return _linear(x, weight, bias)


class OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with its forward and both gradients through oneDNN (float32, CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = _linear(grad_out, weight.t(), None) if need_x else None  # grad @ W
        grad_w = (_linear(grad.t(), x.reshape(-1, x.shape[-1]).t(), None)  # grad^T @ x
                  if need_w else None)
        grad_b = grad.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b


def _plain(t: torch.Tensor | None) -> bool:
    return t is None or (type(t) in (torch.Tensor, torch.nn.Parameter)
                         and t.dtype == torch.float32 and t.device.type == "cpu")


class _LinearsThroughOneDNN(TorchFunctionMode):
    """Sends float32 CPU ``F.linear`` calls to ``OneDNNLinear``; everything else runs as is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and not torch.compiler.is_compiling() \
                and not torch.is_autocast_enabled("cpu"):
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if _plain(x) and _plain(weight) and _plain(bias) and weight.dim() == 2:
                if torch.is_grad_enabled() and any(
                        t is not None and t.requires_grad for t in (x, weight, bias)):
                    return OneDNNLinear.apply(x, weight, bias)
                return _linear(x, weight, bias)
        return func(*args, **kwargs)


@contextlib.contextmanager
def onednn_linears(enabled: bool = True) -> Iterator[None]:
    """Within: ``F.linear`` on float32 CPU tensors runs through oneDNN, where
    ``matmul_library()`` chooses it (decided on entry); a no-op elsewhere or when not
    ``enabled`` (a compiled model: inductor chooses its own kernels)."""
    if not enabled or matmul_library() != "onednn":
        yield
        return
    with _LinearsThroughOneDNN():
        yield


def recompute_contexts() -> tuple[contextlib.AbstractContextManager,
                                  contextlib.AbstractContextManager]:
    """``context_fn`` for ``torch.utils.checkpoint`` (non-reentrant): its backward pass
    recomputes the forward outside the training loop's ``onednn_linears``; this puts the
    context back for the recompute when the forward ran inside it, so both save the same
    tensors (checkpoint refuses a recompute that saves others)."""
    from torch.overrides import _get_current_function_mode_stack

    inside = any(isinstance(mode, _LinearsThroughOneDNN)
                 for mode in _get_current_function_mode_stack())
    return contextlib.nullcontext(), (_LinearsThroughOneDNN() if inside
                                      else contextlib.nullcontext())


__all__ = ["CHOICES", "ENV", "OneDNNLinear", "addmm", "addmm_", "cpu_vendor", "linear",
           "matmul_library", "mm", "onednn_linears", "recompute_contexts"]
