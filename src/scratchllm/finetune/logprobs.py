"""Sequence log-probabilities of responses: what DPO compares (book ch. 7 ``compute_logprobs``).

A model whose head can be run apart (``model.loss.head_of``: GPT, Llama) is scored through
``model.loss.token_logprobs``, a few positions at a time, so the (2B, T, vocab) fp32
log-softmax of the book's version never exists; other models go through full logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.data.instruction import IGNORE_INDEX
from scratchllm.model.loss import head_of, token_logprobs


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


def model_logprobs(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                   average: bool = True) -> torch.Tensor:
    """(B,) response log-probabilities of ``model`` on (B, T) inputs and targets."""
    head = head_of(model)
    if head is None:
        return sequence_logprobs(model(inputs), targets, average=average)
    picked = token_logprobs(model(inputs, return_hidden=True), head, targets,
                            ignore_index=IGNORE_INDEX)
    return reduce_logprobs(picked, targets, average=average)


def pair_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], *,
                  average: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-probs from one forward pass over the stacked (2B, T) batch."""
    inputs = torch.cat([batch["chosen_inputs"], batch["rejected_inputs"]])
    targets = torch.cat([batch["chosen_targets"], batch["rejected_targets"]])
    logps = model_logprobs(model, inputs, targets, average=average)
    n = batch["chosen_inputs"].shape[0]
    return logps[:n], logps[n:]
