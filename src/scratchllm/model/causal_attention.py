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
  PyTorch's fused softmax backward;
* ``projected_causal_attention`` also takes over the QKV projection (GPT's training
  forward), computing it as ``W @ x^T`` so the heads come out in the layout the batched
  matmuls read without copies (``_ProjectedCausalAttention``).

Values and gradients equal the plain formula with the same mask (tests/model/test_dropout.py,
tests/model/test_training_path.py).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from scratchllm.model import cpu_matmul
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
        # a backward called inside an autocast region would run these matmuls in its dtype
        with torch.autocast(grad_out.device.type, enabled=False):
            return _CausalAttentionDropout._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: torch.Tensor):
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


def written_out_attention_applies(queries: torch.Tensor) -> bool:
    """Whether ``causal_attention_with_dropout`` serves these (training, dropout, causal)
    queries: CPU tensors in fp32, or in bf16/fp16 outside compiled code. Under bf16 autocast
    SDPA's CPU math path also computes in fp32, but draws its mask with ``bernoulli_``, which
    alone took ~10% of a GPT-2 124M step on an AMX CPU."""
    if queries.device.type != "cpu":
        return False
    return queries.dtype == torch.float32 or (
        queries.dtype in (torch.bfloat16, torch.float16) and not torch.compiler.is_compiling())


def causal_attention_with_dropout(queries: torch.Tensor, keys: torch.Tensor,
                                  values: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal attention over (B, H, T, D) queries, keys and values (book 3.5) with dropout
    ``dropout_p`` on the weights, for training on the CPU; (B, H, T, D) out.

    bf16/fp16 inputs (autocast training) are attended in fp32, as SDPA's CPU math path
    attends them, and the result is cast back. Code being compiled gets the same formula as
    plain ops (inductor fuses those and draws its own dropout mask); eager code gets the
    written-out backward above.
    """
    if queries.dtype != torch.float32:
        with torch.autocast(queries.device.type, enabled=False):
            out = causal_attention_with_dropout(queries.float(), keys.float(), values.float(),
                                                dropout_p)
        return out.to(queries.dtype)
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


class _ProjectedCausalAttention(torch.autograd.Function):
    """The QKV projection and ``_CausalAttentionDropout`` in one, heads kept as (B*H, D, T).

    ``W @ x^T`` gives the projection as (3E, B*T): every head's query, key and value rows
    come out as (D, T) blocks, which the batched matmuls read transposed for free, so one copy
    that regroups the blocks by sequence is the only data movement; the backward produces the
    gradients in the same layout and one copy turns them back into a (3E, B*T) matrix. The
    token-major ``x @ W^T`` writes a wide (B*T, 3E) output, which MKL ran slower
    (``model.feature_major``), and needs three copies to split the heads out.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                n_heads: int, dropout_p: float) -> torch.Tensor:
        batch, n_tokens, emb_dim = x.shape
        head_dim = emb_dim // n_heads
        rows = x.reshape(batch * n_tokens, emb_dim)
        qkv_t = (cpu_matmul.mm(weight, rows.t()) if bias is None
                 else cpu_matmul.addmm(bias[:, None], weight, rows.t()))  # (3E, B*T)
        heads = (qkv_t.view(3, n_heads, head_dim, batch, n_tokens).permute(0, 3, 1, 2, 4)
                 .contiguous().view(3, batch * n_heads, head_dim, n_tokens))
        del qkv_t
        q_t, k_t, v_t = heads.unbind(0)  # (B*H, D, T) each
        score_scale = head_dim ** -0.5
        scores = torch.baddbmm(causal_mask(n_tokens, dtype=x.dtype, device=x.device),
                               q_t.transpose(1, 2), k_t, alpha=score_scale)
        probs = torch.softmax(scores, dim=-1)
        del scores
        keep, keep_scale = keep_mask(probs.shape, dropout_p, dtype=probs.dtype)
        dropped = probs * keep
        out = torch.bmm(dropped, v_t.transpose(1, 2)).mul_(keep_scale)  # (B*H, T, D)
        ctx.save_for_backward(rows, weight, heads, probs, keep, dropped)
        ctx.scales = (score_scale, keep_scale)
        ctx.shape = (batch, n_tokens, n_heads, head_dim)
        ctx.has_bias = bias is not None
        return out.view(batch, n_heads, n_tokens, head_dim).transpose(1, 2).reshape(
            batch, n_tokens, emb_dim)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        rows, weight, heads, probs, keep, dropped = ctx.saved_tensors
        score_scale, keep_scale = ctx.scales
        batch, n_tokens, n_heads, head_dim = ctx.shape
        q_t, k_t, v_t = heads.unbind(0)
        grad = grad_out.reshape(batch, n_tokens, n_heads, head_dim).transpose(1, 2).reshape(
            batch * n_heads, n_tokens, head_dim)
        grad_heads = torch.empty_like(heads)
        torch.bmm(grad.transpose(1, 2), dropped, out=grad_heads[2]).mul_(keep_scale)
        grad_dropped = torch.bmm(grad, v_t)
        grad_dropped.mul_(keep)
        grad_scores = torch._softmax_backward_data(grad_dropped, probs, -1, probs.dtype)
        del grad_dropped
        scale = score_scale * keep_scale
        torch.bmm(k_t, grad_scores.transpose(1, 2), out=grad_heads[0]).mul_(scale)
        torch.bmm(q_t, grad_scores, out=grad_heads[1]).mul_(scale)
        del grad_scores
        grad_qkv_t = grad_heads.view(3, batch, n_heads, head_dim, n_tokens).permute(
            0, 2, 3, 1, 4).reshape(3 * n_heads * head_dim, batch * n_tokens)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = (cpu_matmul.mm(grad_qkv_t.t(), weight).view(batch, n_tokens, -1)
                  if need_x else None)
        grad_w = cpu_matmul.mm(grad_qkv_t, rows) if need_w else None
        grad_b = grad_qkv_t.sum(1) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None


def projected_attention_applies(x: torch.Tensor, qkv: torch.nn.Module, dropout_p: float) -> bool:
    """Whether ``projected_causal_attention`` may stand in for the QKV projection and
    ``causal_attention_with_dropout`` (fp32 CPU training with a plain ``nn.Linear``)."""
    return (dropout_p > 0.0 and torch.is_grad_enabled() and x.dtype == torch.float32
            and type(qkv) is torch.nn.Linear and type(qkv.weight.data) is torch.Tensor
            and qkv.weight.dtype == torch.float32 and cheap_mask_applies(x, dropout_p)
            and not torch.is_autocast_enabled("cpu"))


def projected_causal_attention(x: torch.Tensor, qkv: torch.nn.Linear, n_heads: int,
                               dropout_p: float) -> torch.Tensor:
    """Causal multi-head attention with dropout over (B, T, E) ``x``, projected by ``qkv``
    (rows [0, E) queries, [E, 2E) keys, [2E, 3E) values); (B, T, E) out, before the output
    projection. Equal to ``causal_attention_with_dropout`` on ``qkv(x)``'s heads."""
    return _ProjectedCausalAttention.apply(x, qkv.weight, qkv.bias, n_heads, dropout_p)
