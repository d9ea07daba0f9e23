"""Losses over the vocabulary head that hold a bounded (rows, vocab_size) fp32 tensor at a time.

GPT-2's head maps each position to 50,257 logits: at batch 2 x 256 positions that is 100 MB
of fp32 logits, and the plain ``F.cross_entropy(model(x), y)`` keeps them, their
log-softmax and, in the backward pass, a gradient of the same size, each written and read
in full. Both helpers here run the head over a bounded number of rows at a time instead:

* ``chunked_cross_entropy``: the mean next-token loss of pretraining. Its gradient with
  respect to each chunk's logits is ``softmax - one_hot`` (times the upstream scalar), known
  already in the forward pass, so each chunk's logits buffer is turned into its own gradient
  in place and multiplied into the hidden-state and head-weight gradients right away
  (the "fused linear cross-entropy" trick). Nothing is recomputed.
* ``token_logprobs``: per-token log-probabilities (DPO). Their upstream gradient is only known
  in the backward pass, so each chunk is checkpointed: the forward keeps just its hidden rows,
  and the backward runs that chunk's head once more.

Models opt in by accepting ``forward(..., return_hidden=True)`` (GPT and Llama do) and
exposing the head as ``out_head``; ``head_of`` says whether a model can.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scratchllm.model import cpu_matmul

IGNORE_INDEX = -100                # PyTorch's cross-entropy default: positions not scored
CHUNK_ELEMENTS = 1 << 23           # logits per chunk: 8M floats, 32 MB in fp32
# The fused cross-entropy keeps no graph per chunk, only the chunk itself and its
# log-softmax, so it can afford larger chunks, and they are faster: every chunk adds its
# share into the whole (vocab, E) head gradient (154 MB for GPT-2, read and written once per
# chunk), and the head's matmuls run better with more rows. GPT-2 at batch 2 x 256
# positions: one 512-row chunk took 0.86x the time of 166-row chunks (166, 166, 166, 14).
CROSS_ENTROPY_CHUNK_ELEMENTS = 1 << 25  # 32M floats, 128 MB in fp32
# On a GPU each chunk costs a dozen kernel launches and a pass over the fp32 head gradient,
# and memory is less tight. GPT-2 at 8 x 1,024 positions on an H200: 13 chunks of 128 MB took
# 25.6 ms of a 45 ms step, 2 chunks of 1 GiB 21.6 ms, nanoGPT's plain head + cross-entropy
# about 17 ms (and under torch.compile inductor fuses the plain loss, not our Function).
# So accelerators take the plain loss while its fp32 logits stay under PLAIN_LOSS_MAX_ELEMENTS
# and fall back to 1 GiB chunks above (a 128k vocabulary at 8 x 2,048 positions: 8 GiB).
ACCELERATOR_CROSS_ENTROPY_CHUNK_ELEMENTS = 1 << 28  # 256M floats, 1 GiB in fp32
PLAIN_LOSS_MAX_ELEMENTS = 1 << 29                   # 512M floats, 2 GiB in fp32


def chunk_rows(vocab_size: int, elements: int = CHUNK_ELEMENTS) -> int:
    """How many positions fit a chunk of ``elements`` logits (at least one)."""
    return max(1, elements // max(1, vocab_size))


def even_chunk_rows(total: int, max_rows: int) -> int:
    """Rows per chunk when ``total`` rows are split into as few chunks of at most
    ``max_rows`` as possible, all about the same size: a last chunk of a few rows would cost
    nearly a whole chunk's time (its matmul still streams the whole head weight)."""
    chunks = max(1, -(-total // max(1, max_rows)))
    return max(1, -(-total // chunks))


@functools.lru_cache(maxsize=None)
def _takes_return_hidden(cls: type) -> bool:
    return "return_hidden" in inspect.signature(cls.forward).parameters


def head_of(model: nn.Module) -> nn.Module | None:
    """``model.out_head`` when ``model(x, return_hidden=True)`` gives its input, else None
    (wrapped models, e.g. DDP or torch.compile, go through the plain loss)."""
    head = getattr(model, "out_head", None)
    if not isinstance(head, nn.Module) or not _takes_return_hidden(type(model)):
        return None
    return head


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """What autocast would run the head's matmul in (``dtype`` when autocast is off)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``targets``, chunk by chunk.

    The gradients are formed in the forward pass (scaled by 1 / scored positions) and only
    multiplied by the upstream scalar in ``backward``.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, ignore_index: int, rows: int,
                dtype: torch.dtype) -> torch.Tensor:
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(hidden.device.type, enabled=False):
            h_all, w = hidden.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            valid_all = targets != ignore_index
            count = valid_all.sum()
            inv_count = 1.0 / count.clamp(min=1).float()
            grad_h = torch.empty_like(hidden) if need_h else None
            # the first chunk's matmul writes it, later ones add to it: no zero-filling pass
            # over the (vocab, E) gradient (154 MB for GPT-2) unless there is no chunk at all
            grad_w = (torch.empty if h_all.shape[0] else torch.zeros)(
                weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) \
                if need_b else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, h_all.shape[0], rows):
                h, t = h_all[start:start + rows], targets[start:start + rows]
                valid = valid_all[start:start + rows]
                safe = torch.where(valid, t, 0)[:, None]
                logits = cpu_matmul.linear(h, w, b).float()
                # softmax by hand, in place over the logits: max, subtract, exp, row sums.
                # log_softmax + exp + a scaling pass ran ~2x slower here (PyTorch's CPU
                # log-softmax kernel is far slower than its max, exp and sum), and the
                # chunk's logits are ours to overwrite: they become its gradient.
                picked = logits.gather(1, safe).squeeze(1)
                row_max = logits.amax(dim=1, keepdim=True)
                exps = logits.sub_(row_max).exp_()
                del logits
                sums = exps.sum(dim=1, keepdim=True)
                row_loss = (row_max + sums.log()).squeeze(1) - picked  # logsumexp - target
                total += torch.where(valid, row_loss, 0.0).sum()
                if not (need_h or need_w or need_b):
                    continue
                # d loss / d logits = (softmax - one_hot) / count on scored rows, 0 elsewhere
                row_scale = valid.float()[:, None] * inv_count
                grad = exps.mul_(row_scale / sums)
                grad.scatter_add_(1, safe, -row_scale)
                grad = grad.to(dtype)
                if need_h and grad_h.dtype == dtype:
                    cpu_matmul.mm(grad, w, out=grad_h[start:start + rows])
                elif need_h:
                    grad_h[start:start + rows] = grad @ w
                if need_w and dtype == torch.float32:
                    if start == 0:
                        cpu_matmul.mm(grad.T, h, out=grad_w)
                    else:
                        cpu_matmul.addmm_(grad_w, grad.T, h)
                elif need_w:  # bf16/fp16 product, widened by the copy or the add itself
                    chunk_w = grad.T @ h
                    if start == 0:
                        grad_w.copy_(chunk_w)
                    else:
                        grad_w += chunk_w
                if need_b:
                    grad_b += grad.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total / count  # NaN when nothing is scored, as F.cross_entropy gives

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grads = []
        for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes):
            if grad is None:
                grads.append(None)
                continue
            # The usual upstream gradient is exactly 1 (accumulation steps give 1/k): skip a
            # pass over the 150 MB head gradient then.
            if not (grad_out.device.type == "cpu" and grad_out.item() == 1.0):
                grad = grad * grad_out
            grads.append(grad.to(dtype))
        return (*grads, None, None, None, None)


def chunked_cross_entropy(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, *,
                          ignore_index: int = IGNORE_INDEX,
                          rows: int | None = None) -> torch.Tensor:
    """``F.cross_entropy(head(hidden).float(), targets)`` (mean over scored positions) with
    the head applied ``rows`` positions at a time, its gradients fused into the forward pass.
    By default the chunks are as few as keep each under ``CROSS_ENTROPY_CHUNK_ELEMENTS``
    logits, all the same size (``even_chunk_rows``).

    hidden: (..., E) inputs of ``head``; targets: (...) token ids, ``ignore_index`` not scored.
    Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as the plain
    loss does.
    """
    flat = hidden.reshape(-1, hidden.shape[-1])
    dtype = _compute_dtype(hidden.device, head.weight.dtype)
    elements = (CROSS_ENTROPY_CHUNK_ELEMENTS if hidden.device.type == "cpu"
                else ACCELERATOR_CROSS_ENTROPY_CHUNK_ELEMENTS)
    rows = rows or even_chunk_rows(flat.shape[0], chunk_rows(head.weight.shape[0], elements))
    return _LinearCrossEntropy.apply(flat, head.weight, head.bias, targets.reshape(-1),
                                     ignore_index, rows, dtype)


class _PickedLogProb(torch.autograd.Function):
    """``log_softmax(logits)[target]`` per row (0 where ``ignore_index``). The backward
    forms ``g * (one_hot - softmax)`` in one buffer, where autograd's gather + log-softmax
    backward would write a zero-filled scatter target and then a second tensor."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int):
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)[:, None]
        logp = torch.log_softmax(logits, dim=-1)
        out = torch.where(valid, logp.gather(1, safe).squeeze(1), 0.0)
        ctx.save_for_backward(logp, safe, valid)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logp, safe, valid = ctx.saved_tensors
        g = torch.where(valid, grad_out, 0.0)
        grad = torch.exp(logp).mul_(-g[:, None])  # -g * softmax
        grad.scatter_add_(1, safe, g[:, None])    # +g at the target
        return grad, None, None


def _chunk_logprobs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                    ignore_index: int, temperature: float) -> torch.Tensor:
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return _PickedLogProb.apply(logits, targets, ignore_index)


def head_chunks(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor,
                rows: int | None) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Flattened hidden states and targets, the rows per head chunk, and whether the chunks
    need a graph (then each is recomputed in the backward pass instead of kept)."""
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    out_features = getattr(head, "out_features", None) or head.weight.shape[0]
    keep_graph = torch.is_grad_enabled() and (
        flat_h.requires_grad or any(p.requires_grad for p in head.parameters()))
    return flat_h, targets.reshape(-1), rows or chunk_rows(out_features), keep_graph


def token_logprobs(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, *,
                   ignore_index: int = IGNORE_INDEX, rows: int | None = None,
                   temperature: float = 1.0) -> torch.Tensor:
    """fp32 ``log_softmax(head(hidden) / temperature)`` at each target token, shaped like
    ``targets``; 0 where the target is ``ignore_index``.

    ``head`` is any module (a LoRA-wrapped head too), run ``rows`` positions at a time; with
    gradients on, each chunk is recomputed in the backward pass instead of kept.
    """
    flat_h, flat_t, rows, keep_graph = head_chunks(hidden, head, targets, rows)
    pieces = []
    for start in range(0, flat_h.shape[0], rows):
        h, t = flat_h[start:start + rows], flat_t[start:start + rows]
        if keep_graph:
            pieces.append(checkpoint(_chunk_logprobs, head, h, t, ignore_index, temperature,
                                     use_reentrant=False,
                                     context_fn=cpu_matmul.recompute_contexts))
        else:
            pieces.append(_chunk_logprobs(head, h, t, ignore_index, temperature))
    return torch.cat(pieces).view(targets.shape)


def next_token_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on one batch (book 5.1.2): chunked over the
    head when the model allows it (``head_of``), the plain loss over full logits otherwise."""
    head = head_of(model)
    if (isinstance(head, nn.Linear) and type(head.weight.data) is torch.Tensor
            and not plain_loss_pays(head.weight.device, targets.numel(), head.weight.shape[0])):
        return chunked_cross_entropy(model(inputs, return_hidden=True), head, targets)
    compiled = hasattr(model, "_orig_mod")  # torch.compile's wrapper (OptimizedModule)
    loss = _compiled_plain_loss() if compiled else plain_loss
    return loss(model(inputs), targets)


def plain_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over full (B, T, vocab) logits, in fp32 as the book's loss."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@functools.cache
def _compiled_plain_loss():
    """``plain_loss`` compiled, for models the user compiled (``--compile``): the compiled
    model ends at its logits, and in eager mode the fp32 cast, log-softmax and their backward
    each pass over the (B, T, vocab) tensor (GPT-2 at 8 x 1,024 positions: ~14 GB of traffic
    a step, about the 4 ms by which our compiled H200 step trailed nanoGPT's, whose loss sits
    inside its compiled forward). Inductor fuses them into a few kernels."""
    return torch.compile(plain_loss)


def plain_loss_pays(device: torch.device, positions: int, vocab_size: int) -> bool:
    """Whether the plain full-logits loss beats the chunked one: on accelerators while the
    fp32 logits stay under ``PLAIN_LOSS_MAX_ELEMENTS`` (fewer kernels, and inductor fuses it);
    never on the CPU, where the fused chunks are faster and keep memory bounded."""
    return device.type != "cpu" and positions * vocab_size <= PLAIN_LOSS_MAX_ELEMENTS
