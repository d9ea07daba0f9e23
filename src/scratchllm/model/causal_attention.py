"""Causal self-attention with dropout for fp32 training on the CPU, backward pass written out.

PyTorch's CPU flash kernel has no dropout, so ``scaled_dot_product_attention`` with
``dropout_p > 0`` falls back to its math path: the causal mask rebuilt on every call, a check
of every row for being fully masked, ``bernoulli_`` masks, and autograd's generic backward
of each step. Every one of those is a pass over the (B*H, T, T) attention weights, which at
GPT-2's shape (24 x 256 x 256 at batch 2) are the largest tensors in a block. Here:

* one ``baddbmm`` adds the scaled scores to a causal mask (-inf above the diagonal) built
  once per device and dtype and sliced per call;
* the dropout mask is ``model.dropout.keep_mask``'s 0/1 one (16 random bits an element),
  applied with one multiplication; its 1 / (1 - p) scale and the 1 / sqrt(D) score scale are
  applied to the (B*H, T, D) results of the matmuls, never to a (T, T) tensor;
* the backward is four batched matmuls, one in-place multiplication by the mask and
  PyTorch's fused softmax backward.

Values and gradients equal the plain formula with the same mask (tests/model/test_dropout.py).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from scratchllm.model.dropout import cheap_mask_applies, dropout, keep_mask

_causal_masks: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def causal_mask(n_tokens: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(T, T) additive causal mask, 0 on and below the diagonal and -inf above, as a view of
    one kept per device and dtype (grown when a longer sequence asks)."""
    key = (torch.device(device), dtype)
    mask = _causal_masks.get(key)
    if mask is None or mask.shape[0] < n_tokens:
        mask = torch.full((n_tokens, n_tokens), float("-inf"), dtype=dtype,
                          device=device).triu_(1)
        _causal_masks[key] = mask
    return mask[:n_tokens, :n_tokens]


class _CausalAttentionDropout(torch.autograd.Function):
    """softmax(Q K^T / sqrt(D) + causal) with dropout, times V, on (B*H, T, D) tensors."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                dropout_p: float) -> torch.Tensor:
        score_scale = q.shape[-1] ** -0.5
        scores = torch.baddbmm(causal_mask(q.shape[1], dtype=q.dtype, device=q.device),
                               q, k.transpose(1, 2), alpha=score_scale)
        probs = torch.softmax(scores, dim=-1)
        del scores
        keep, keep_scale = keep_mask(probs.shape, dropout_p, dtype=probs.dtype)  # 0/1
        dropped = probs * keep
        out = torch.bmm(dropped, v).mul_(keep_scale)
        ctx.save_for_backward(q, k, v, probs, keep, dropped)
        ctx.scales = (score_scale, keep_scale)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, probs, keep, dropped = ctx.saved_tensors
        score_scale, keep_scale = ctx.scales
        grad_out = grad_out.contiguous()
        grad_v = torch.bmm(dropped.transpose(1, 2), grad_out).mul_(keep_scale)
        grad_dropped = torch.bmm(grad_out, v.transpose(1, 2))
        grad_dropped.mul_(keep)
        # the softmax backward is linear in its incoming gradient: both scales go on the
        # small (B*H, T, D) results below instead of a pass over the (T, T) gradient
        grad_scores = torch._softmax_backward_data(grad_dropped, probs, -1, probs.dtype)
        del grad_dropped
        scale = score_scale * keep_scale
        grad_q = torch.bmm(grad_scores, k).mul_(scale)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q).mul_(scale)
        return grad_q, grad_k, grad_v, None


def causal_attention_with_dropout(queries: torch.Tensor, keys: torch.Tensor,
                                  values: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal attention over (B, H, T, D) queries, keys and values (book 3.5) with dropout
    ``dropout_p`` on the weights, for fp32 training on the CPU; (B, H, T, D) out.

    Code being compiled gets the same formula as plain ops (inductor fuses those and draws
    its own dropout mask); eager code gets the written-out backward above.
    """
    batch, heads, n_tokens, head_dim = queries.shape
    q, k, v = (t.reshape(batch * heads, n_tokens, head_dim) for t in (queries, keys, values))
    if cheap_mask_applies(q, dropout_p):
        out = _CausalAttentionDropout.apply(q, k, v, dropout_p)
    else:  # compiling, or a p that F.dropout must draw: plain ops
        future = torch.full((n_tokens, n_tokens), float("-inf"), dtype=q.dtype,
                            device=q.device).triu_(1)
        scores = torch.baddbmm(future, q, k.transpose(1, 2), alpha=head_dim ** -0.5)
        out = torch.bmm(dropout(torch.softmax(scores, dim=-1), dropout_p), v)
    return out.view(batch, heads, n_tokens, head_dim)
