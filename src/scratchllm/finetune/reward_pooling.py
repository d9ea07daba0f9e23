"""Where a reward model reads its score: at the end token, or averaged over the response.

``last`` (the default; InstructGPT's and TRL's choice, the ch. 6 classifier's): the head's
output at the end id after the response, the one position whose causal attention has seen
the whole text.

``mean``: the head's output averaged over the response tokens and that end id. Why it exists:
when the chosen and rejected answers differ by a few words (the book's preference data: the
rejected answer is often the same sentence with "stupid" or "get it together" added) a small
model trained on a few hundred pairs learns those words faster when every response position
votes; read at one position it has to learn to attend to them, and it memorises the training
pairs first (``benchmarks/rlhf.py`` measures both). The prompt is left out: causal attention
makes its positions identical for both answers of a pair, so they would only dilute the gap.
A mean does not grow with the answer's length, so PPO cannot raise it by talking longer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scratchllm.errors import ConfigError, DataError
from scratchllm.finetune.classifier_model import last_token_logits

POOLINGS = ("last", "mean")


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown reward pooling {pooling!r}; use 'last' (the end token) or "
                          "'mean' (the average over the response)")
    return pooling


def finish_with_start(ids: Sequence[int], start: int, end_id: int, limit: int,
                      end_ids: Sequence[int] = ()) -> tuple[list[int], int]:
    """``ids`` without trailing end ids, plus one ``end_id``, keeping the last ``limit`` tokens;
    and where the response begins in the result.

    ``start`` is the response's first position in ``ids`` (the prompt's length). Cutting the
    beginning moves it left; it never passes the end id, so even an empty answer has one
    position to average.
    """
    ids = list(ids)
    ends = set(end_ids) | {end_id}
    while ids and ids[-1] in ends:
        ids.pop()
    ids.append(end_id)
    cut = max(len(ids) - limit, 0)
    ids = ids[cut:]
    return ids, min(max(start - cut, 0), len(ids) - 1)


def pooled_scores(model: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor,
                  starts: torch.Tensor | None = None, pooling: str = "last") -> torch.Tensor:
    """(B,) scores of right-padded rows: ``lengths`` real tokens, response from ``starts``."""
    if pooling == "last":
        return last_token_logits(model, input_ids, lengths)[:, 0]
    check_pooling(pooling)
    if starts is None:
        raise DataError("a mean-pooled reward model needs where each response starts (the "
                        "prompt lengths); score with RewardScorer.score or score_ids")
    per_token = model(input_ids)[..., 0]
    positions = torch.arange(input_ids.shape[1], device=per_token.device)
    lengths, starts = lengths.to(per_token.device), starts.to(per_token.device)
    if bool((starts >= lengths).any()) or bool((starts < 0).any()):
        raise DataError(f"response starts {starts.tolist()} must lie inside the rows' lengths "
                        f"{lengths.tolist()}")
    mask = (positions >= starts[:, None]) & (positions < lengths[:, None])
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum(dim=1) / weights.sum(dim=1)
