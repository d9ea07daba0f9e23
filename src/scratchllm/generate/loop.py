"""The decoding loop: run the model, pick a token, append it, repeat (book 4.7 and 5.3).

Without a cache every step runs the model over the last ``context_length`` tokens, exactly
like the book's ``generate_text_simple``. With the KV cache the prompt is run once (prefill)
and each later step feeds only the newest token, reusing the stored keys and values.

Context overflow: GPT-2 has learned *absolute* position embeddings, so once the sequence is
longer than the context window the sliding window shifts every token to a new position and
the cached keys become stale. From then on each step is a fresh forward over the last
``context_length`` tokens (the uncached cost), which reproduces the uncached result exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from scratchllm.errors import ConfigError, DataError
from scratchllm.generate.sampling import check_sampling_args, sample_next_token

PickFn = Callable[[torch.Tensor], torch.Tensor]


def decode_steps(model: nn.Module, token_ids: torch.Tensor, max_new_tokens: int,
                 pick: PickFn, *, attention_mask: torch.Tensor | None = None,
                 use_cache: bool = True,
                 finished: Collection[int] | None = None) -> Iterator[torch.Tensor]:
    """Yield the (B,) next token ids, one step at a time, for a (B, T) batch of prompts.

    ``attention_mask`` (B, T) marks left padding with 0 (see ``GPTModel.forward``). Each
    step's compute runs under ``torch.inference_mode``, but never across a ``yield``, so
    the caller's code between steps runs in its normal mode.

    ``finished``: row indices the caller adds to (between steps) once a row needs no more
    tokens; those rows leave the batch before the next step, KV cache included, so the
    step's matmuls, attention and output head run for the running rows only. Their entries
    in later yields are 0. Rows are then decoded by a smaller batch, which greedy decoding
    does not notice; a sampler's random draws land on other rows, so pass it only where
    rows are independent of each other's draws (``generate``, ``generate_batch``).
    """
    context = model.config.context_length
    batch, n = token_ids.shape
    with torch.inference_mode():
        # Preallocated, so appending a token is a copy into place, not a concatenation.
        tokens = token_ids.new_empty((batch, n + max_new_tokens))
        tokens[:, :n] = token_ids
        mask = None
        if attention_mask is not None:
            mask = attention_mask.new_ones((batch, n + max_new_tokens))
            mask[:, :n] = attention_mask
        # Sized for this call, not the whole context window (capped there by new_cache).
        cache = model.new_cache(n + max_new_tokens) if use_cache else None
        steps = _PaddedSteps(model, mask, n) if cache is not None and mask is not None \
            and not bool(mask.all()) else None
    rows = list(range(batch))  # the original index of each row still in the batch
    for _ in range(max_new_tokens):
        with torch.inference_mode():
            if finished and any(r in finished for r in rows):
                keep = [i for i, r in enumerate(rows) if r not in finished]
                if not keep:
                    return
                rows = [rows[i] for i in keep]
                index = torch.tensor(keep, device=tokens.device)
                tokens, mask = tokens[index], None if mask is None else mask[index]
                if cache is not None:
                    cache.keep_rows(index)
                if steps is not None:
                    steps.keep_rows(index)
            if cache is not None and n <= context:
                if steps is not None and cache.length > 0:
                    # one new token per row: the mask and positions prepared for the batch
                    logits = model(tokens[:, n - 1:n], cache=cache, last_only=True,
                                   **steps.inputs(n))
                else:  # prefill (cache empty) or one new token; positions continue
                    logits = model(tokens[:, cache.length:n], cache=cache, last_only=True,
                                   attention_mask=None if mask is None else mask[:, :n])
            else:
                start = max(0, n - context)  # sliding window (book generate_text_simple)
                logits = model(tokens[:, start:n], last_only=True,
                               attention_mask=None if mask is None else mask[:, start:n])
            next_ids = pick(logits[:, -1])
            tokens[:, n] = next_ids
            if len(rows) < batch:  # the caller's rows, finished ones as 0
                next_ids = next_ids.new_zeros(batch).index_copy_(
                    0, torch.tensor(rows, device=next_ids.device), next_ids)
        n += 1
        yield next_ids


class _PaddedSteps:
    """A left-padded batch's attention mask and positions for its one-token decode steps,
    built once per batch instead of every step (a step would otherwise rebuild a (B, 1, 1, S)
    mask from the 1/0 mask, count positions over it, and convert it to an additive mask in
    every layer's attention)."""

    def __init__(self, model: nn.Module, mask: torch.Tensor, prompt_len: int) -> None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                     torch.float32)
        # 0 where a key may be seen, -inf on padding: what attention adds to its scores
        self.additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device) \
            .masked_fill_(mask == 0, float("-inf"))[:, None, None, :]
        # Positions count real tokens only: column c >= prompt_len of a row sits at
        # (its real prompt tokens) + (c - prompt_len), i.e. first + c.
        self.first = mask[:, :prompt_len].sum(-1, keepdim=True) - prompt_len

    def inputs(self, n: int) -> dict[str, torch.Tensor]:
        """``forward`` keywords for feeding column ``n - 1`` with ``n`` positions cached+new."""
        return {"attention_mask": self.additive[..., :n], "position_ids": self.first + (n - 1)}

    def keep_rows(self, index: torch.Tensor) -> None:
        self.additive, self.first = self.additive[index], self.first[index]


@contextmanager
def eval_mode(model: nn.Module):
    """Switch dropout off while generating, then give the model back in the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def make_picker(temperature: float, top_k: int | None, top_p: float | None,
                min_p: float | None, seed: int | None, generator: torch.Generator | None,
                device: torch.device) -> PickFn:
    """Check the sampling settings once and bind them into a (B, V) -> (B,) function."""
    check_sampling_args(temperature, top_k, top_p, min_p)
    if seed is not None and generator is not None:
        raise ConfigError("pass either seed or generator, not both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        generator = torch.Generator(device=device).manual_seed(seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return sample_next_token(logits, temperature, top_k, top_p, min_p, generator)

    return pick


def check_count(max_new_tokens: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")


def check_eos(eos_id: int | Iterable[int] | None) -> tuple[int, ...]:
    """The end ids as a tuple (first one first): a model may end a turn with any of several
    tokens (Llama 3: ``<|end_of_text|>``, ``<|eot_id|>``, ``<|eom_id|>``)."""
    if eos_id is None:
        return ()
    ids = [eos_id] if isinstance(eos_id, int) and not isinstance(eos_id, bool) else eos_id
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise ConfigError(f"eos_id must be a token id, a collection of token ids or None, "
                          f"got {eos_id!r}")
    ids = list(ids)
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ConfigError(f"eos_id must hold non-negative integer token ids, got {eos_id!r}")
    return tuple(dict.fromkeys(ids))


def ids_from_list(ids: list[int], what: str = "token_ids") -> list[int]:
    """Check a plain list of token ids (a clear error instead of torch's conversion error)."""
    if not isinstance(ids, (list, tuple)) or not ids:
        raise DataError(
            f"{what} must be a non-empty list of token ids, got {ids!r:.80}; encode some "
            "text first (an empty prompt can start from the tokenizer's eot_id)"
        )
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise DataError(f"{what} must contain only integers, got {list(ids)!r:.80}")
    return list(ids)


def check_vocab(ids: torch.Tensor, vocab_size: int) -> None:
    """Out-of-range ids fail here, at the call, rather than at a stream's first step."""
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise DataError(
            f"token ids must be in [0, {vocab_size}), got values from {low} to {high}; was "
            "the prompt encoded with this model's tokenizer?"
        )


def as_batch(token_ids, device: torch.device) -> torch.Tensor:
    """A (B, T) long tensor on ``device`` from a list of ids, a (T,) or a (B, T) tensor."""
    if isinstance(token_ids, torch.Tensor):
        if token_ids.dim() not in (1, 2) or token_ids.numel() == 0:
            raise DataError(
                f"token_ids must be a non-empty (T,) or (batch, T) tensor, got shape "
                f"{tuple(token_ids.shape)}"
            )
        if token_ids.dtype.is_floating_point or token_ids.dtype in (torch.bool, torch.complex64,
                                                                    torch.complex128):
            raise DataError(f"token_ids must hold integers, got {token_ids.dtype}; use .long()")
        batch = token_ids if token_ids.dim() == 2 else token_ids.unsqueeze(0)
        return batch.to(device=device, dtype=torch.long)
    return torch.tensor([ids_from_list(token_ids)], dtype=torch.long, device=device)


def left_pad(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor,
                                                                      torch.Tensor | None]:
    """Right-align prompts of different lengths: (B, T_max) ids and a 1/0 mask (None if equal).

    Left padding keeps every row's newest token in the last column, where the next token is
    read from; the mask hides the padding and keeps each row's positions starting at 0.
    """
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise DataError("prompts must be a non-empty list of token-id lists")
    rows = [ids_from_list(p, what=f"prompts[{i}]") for i, p in enumerate(prompts)]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    if bool(mask.all()):
        return ids.to(device), None
    return ids.to(device), mask.to(device)
