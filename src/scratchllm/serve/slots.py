"""KV caches for continuous batching: one per sequence, and a batch view that decodes them together.

Sequences in a server batch started at different times, so their cached lengths differ. A
shared padded cache would make every row attend over the longest row's length (plus a mask),
and padding changes the floating-point sums of the shorter rows: a request's greedy output
would then depend on who else happened to be decoding. Here every sequence owns a plain
``KVCache``; a decode step runs the linear layers once for the whole batch and attention row
by row, each over exactly its own keys, the same call a batch-of-one decode makes.

The batch always has ``width`` rows (idle slots are padding rows whose outputs are ignored):
a CPU matrix multiply may add up a row's products in a different order for a different number
of rows, so a fixed width is what makes a row's logits independent of how many others run.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from scratchllm.model.attention import cached_attention
from scratchllm.model.kv_cache import KVCache


def new_sequence_cache(model: nn.Module, capacity: int) -> KVCache:
    """A cache for one sequence of at most ``capacity`` positions (prompt + new tokens)."""
    return model.new_cache(capacity)


def copy_cache(cache: KVCache) -> KVCache:
    """An independent copy (the other ``n`` choices of a prompt prefilled once)."""
    return copy.deepcopy(cache)


class BatchedDecodeCache:
    """The ``cache=`` of one batched decode step: row ``i`` continues ``caches[i]``.

    ``None`` rows are padding: their attention output is zero and nothing is stored. Keeps
    the cache contract the models use (``length``, ``advance``) and takes attention over
    through ``attend`` (see ``scratchllm.model.attention.cached_attention``).
    """

    def __init__(self, caches: Sequence[KVCache | None]) -> None:
        self.caches = list(caches)

    @property
    def length(self) -> int:
        """The longest row's cached length: what the model checks against its context."""
        return max((c.length for c in self.caches if c is not None), default=0)

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *,
               mask: torch.Tensor | None, layer: int) -> torch.Tensor:
        """(B, H, 1, D) outputs, each row attending over its own cache plus its new key."""
        if mask is not None or queries.shape[2] != 1:
            raise ValueError("BatchedDecodeCache decodes one new token per row, without a mask")
        out = torch.zeros_like(queries)
        for row, cache in enumerate(self.caches):
            if cache is not None:
                out[row:row + 1] = cached_attention(
                    queries[row:row + 1], keys[row:row + 1], values[row:row + 1],
                    mask=None, cache=cache, layer=layer)
        return out

    def advance(self, n_tokens: int) -> None:
        for cache in self.caches:
            if cache is not None:
                cache.advance(n_tokens)


def decode_step(model: nn.Module, last_tokens: Sequence[int | None],
                caches: Sequence[KVCache | None]) -> torch.Tensor:
    """(width, vocab) logits of the next token of every row; ``None`` rows are padding.

    Each real row feeds its newest token at its own position (its cached length), so GPT-2's
    learned positions and RoPE rotations are the ones the sequence would get alone.
    """
    device = next(model.parameters()).device
    width = len(caches)
    tokens = torch.zeros((width, 1), dtype=torch.long)
    positions = torch.zeros((width, 1), dtype=torch.long)
    for row, (token, cache) in enumerate(zip(last_tokens, caches)):
        if cache is not None:
            tokens[row, 0] = int(token)
            positions[row, 0] = cache.length
    logits = model(tokens.to(device), cache=BatchedDecodeCache(caches),
                   position_ids=positions.to(device))
    return logits[:, -1]


def prefill(model: nn.Module, prompt: Sequence[int], cache: KVCache) -> torch.Tensor:
    """(vocab,) logits after ``prompt``, whose keys/values fill the empty ``cache``.

    Every prompt is prefilled on its own, so this too never depends on other requests."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    return model(ids, cache=cache, last_only=True)[0, -1]
