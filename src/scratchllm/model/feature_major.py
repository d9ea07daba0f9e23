"""The feed-forward block's training pass with its hidden layer stored feature-major.

GPT-2's feed-forward expands each of the B*T tokens to 4*E features and back (book 4.3).
Stored the usual way, token-major, the expansion's matmuls produce a wide (B*T, 4E) output
(512 x 3072 at batch 2 x 256): fc1's forward and fc2's input gradient. On the CPU, MKL ran
those shapes well below its (4E, B*T) twins with the same FLOPs: in the training profile
fc1's forward reached ~190 GFLOP/s where fc1's input gradient (a 768-wide output) reached
~250, and under load from other processes the wide outputs slowed 2x where the tall ones
held.

Here the hidden layer lives feature-major, as its transpose (4E, B*T): fc1 computes
``W1 @ x^T`` (tall), GELU and its backward run elementwise on that layout, fc2 reads it
transposed for free, and fc2's input gradient is ``W2^T @ g^T`` (tall again). Only fc2's
weight gradient keeps a wide output (its (E, 4E) layout is the parameter's), and nothing is
copied: the block's output and input gradient are ordinary token-major tensors. The maths is the book's FeedForward; only
the order of floating-point additions inside the matmuls differs (~1e-7 relative).

Used for fp32 training on the CPU (``applies``); inference, other dtypes and devices,
autocast, compiled code and wrapped layers (LoRA, quantized) take the plain modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from scratchllm.model import cpu_matmul

_GELU = "tanh"  # GPT-2's approximation (model.layers.GELU)


def _plain_linear(layer: nn.Module) -> bool:
    return (type(layer) is nn.Linear and layer.bias is not None
            and type(layer.weight.data) is torch.Tensor
            and layer.weight.dtype == torch.float32 and layer.weight.device.type == "cpu")


def applies(x: torch.Tensor, fc1: nn.Module, fc2: nn.Module) -> bool:
    """Whether ``feed_forward`` may stand in for ``fc2(gelu(fc1(x)))`` here."""
    return (torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and _plain_linear(fc1) and _plain_linear(fc2)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and (x.requires_grad or fc1.weight.requires_grad or fc2.weight.requires_grad))


class _FeatureMajorFeedForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                b2: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        hidden_t = cpu_matmul.addmm(b1[:, None], w1, rows.t())  # (4E, B*T)
        act_t = F.gelu(hidden_t, approximate=_GELU)
        out = cpu_matmul.addmm(b2, act_t.t(), w2.t())  # (B*T, E)
        ctx.save_for_backward(rows, w1, w2, hidden_t, act_t)
        return out.view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        rows, w1, w2, hidden_t, act_t = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w2 = cpu_matmul.mm(grad.t(), act_t.t()) if need_w2 else None
        grad_b2 = grad.sum(0) if need_b2 else None
        grad_x = grad_w1 = grad_b1 = None
        if need_x or need_w1 or need_b1:
            grad_act_t = cpu_matmul.mm(w2.t(), grad.t())  # (4E, B*T), tall
            grad_hidden_t = torch.ops.aten.gelu_backward(grad_act_t, hidden_t, approximate=_GELU)
            del grad_act_t
            if need_x:
                grad_x = cpu_matmul.mm(grad_hidden_t.t(), w1).view(*grad_out.shape[:-1], w1.shape[1])
            grad_w1 = cpu_matmul.mm(grad_hidden_t, rows) if need_w1 else None
            grad_b1 = grad_hidden_t.sum(1) if need_b1 else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


def feed_forward(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    """``fc2(gelu_tanh(fc1(x)))`` with the hidden layer feature-major (see the module doc)."""
    return _FeatureMajorFeedForward.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
