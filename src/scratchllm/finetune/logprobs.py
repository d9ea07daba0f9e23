"""Sequence log-probabilities of responses: what DPO compares (book ch. 7 ``compute_logprobs``).

A model whose head can be run apart (``model.loss.head_of``: GPT, Llama) is scored through
``model.loss.token_logprobs``, a few positions at a time, so the (2B, T, vocab) fp32
log-softmax of the book's version never exists; other models go through full logits.

The head runs only at the scored (response) positions. Prompt and padding positions are
masked out of the sum anyway, and on the book's preference data they are ~4/5 of a padded
batch: with GPT-2's 50,257-wide head (~1/3 of the 124M model's FLOPs per position) running
it over them would be a quarter of the step spent on numbers that are thrown away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scratchllm.data.instruction import IGNORE_INDEX
from scratchllm.finetune.shared_prompt import shared_prompt_hidden
from scratchllm.model.cpu_matmul import recompute_contexts
from scratchllm.model.loss import head_chunks, head_of, token_logprobs


def reduce_logprobs(token_logps: torch.Tensor, targets: torch.Tensor, *,
                    average: bool = True) -> torch.Tensor:
    """(B,) sum (or mean) of each row's token log-probs over its scored targets."""
    mask = targets != IGNORE_INDEX
    total = (token_logps * mask).sum(dim=-1)
    return total / mask.sum(dim=-1).clamp(min=1) if average else total


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, *,
                      average: bool = True) -> torch.Tensor:
    """(B,) log-probability of each row's target tokens from full (B, T, V) logits, skipping
    ``IGNORE_INDEX`` targets.

    Token log-probs are minus the per-token cross-entropy: PyTorch's fused kernel, which keeps
    no second vocabulary-sized tensor of log-probabilities around as log_softmax + gather would.
    """
    picked = -F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(),
                              ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)
    return reduce_logprobs(picked, targets, average=average)


def _scored_logprobs(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, *,
                     average: bool) -> torch.Tensor:
    """(B,) reduced log-probs from (B, T, E) final hidden states, the head run only where
    ``targets`` are scored."""
    scored = targets != IGNORE_INDEX
    if bool(scored.any()):
        picked = token_logprobs(hidden[scored], head, targets[scored], ignore_index=IGNORE_INDEX)
    else:  # every response cut off: zeros, still on the graph so a backward pass runs
        picked = hidden[scored].sum(dim=-1).float()
    token_logps = picked.new_zeros(targets.shape).masked_scatter(scored, picked)
    return reduce_logprobs(token_logps, targets, average=average)


def model_logprobs(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                   average: bool = True) -> torch.Tensor:
    """(B,) response log-probabilities of ``model`` on (B, T) inputs and targets."""
    head = head_of(model)
    if head is None:
        return sequence_logprobs(model(inputs), targets, average=average)
    return _scored_logprobs(model(inputs, return_hidden=True), head, targets, average=average)


def pair_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], *,
                  average: bool = True, share_prompt: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-probs of one batch from one forward pass over the stacked
    (2B, T) batch; with ``share_prompt``, each pair's prompt is run once and both answers
    after it (``finetune.shared_prompt``: fewer positions, two passes; slower on a CPU at
    small batches, see there) where the model and batch allow it."""
    n = batch["chosen_inputs"].shape[0]
    head = head_of(model)
    shared = shared_prompt_hidden(model, batch) if share_prompt and head is not None else None
    if shared is not None:
        logps = _scored_logprobs(shared[0], head, shared[1], average=average)
        return logps[:n], logps[n:]
    inputs = torch.cat([batch["chosen_inputs"], batch["rejected_inputs"]])
    targets = torch.cat([batch["chosen_targets"], batch["rejected_targets"]])
    logps = model_logprobs(model, inputs, targets, average=average)
    return logps[:n], logps[n:]


def _chunk_logprobs_entropy(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                            temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)  # once: both results are read from it
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked, -(logp.exp() * logp).sum(dim=-1)


def token_logprobs_entropy(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, *,
                           temperature: float = 1.0, with_entropy: bool = True,
                           rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 log-probs of ``targets`` and entropies (nats) of ``softmax(head(hidden) /
    temperature)``, both shaped like ``targets``, the head run ``rows`` positions at a time.

    What RL scores a rollout with: a (B, R, vocab) fp32 log-softmax is 200 MB per 1,000
    positions at GPT-2's vocabulary. Without ``with_entropy`` this is ``token_logprobs``
    (entropy None). With gradients on, each chunk is recomputed in the backward pass.
    """
    if not with_entropy:
        return token_logprobs(hidden, head, targets, temperature=temperature), None
    flat_h, flat_t, rows, keep_graph = head_chunks(hidden, head, targets, rows)
    logps, entropies = [], []
    for start in range(0, flat_h.shape[0], rows):
        args = (head, flat_h[start:start + rows], flat_t[start:start + rows], temperature)
        picked, entropy = (checkpoint(_chunk_logprobs_entropy, *args, use_reentrant=False,
                                      context_fn=recompute_contexts)
                           if keep_graph else _chunk_logprobs_entropy(*args))
        logps.append(picked)
        entropies.append(entropy)
    if not logps:
        empty = flat_h.sum(dim=-1).float().view(targets.shape)
        return empty, empty
    return torch.cat(logps).view(targets.shape), torch.cat(entropies).view(targets.shape)
