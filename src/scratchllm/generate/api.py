"""The public entry points: ``generate``, ``generate_batch`` and ``stream`` (book 4.7, 5.3).

All three share one decoding loop (``loop.decode_steps``) and the same settings:

* ``temperature=0`` is greedy decoding; otherwise tokens are sampled after ``top_k``,
  ``top_p`` (nucleus) and ``min_p`` filtering. ``seed`` or ``generator`` makes sampling
  reproducible without touching the global random state.
* ``eos_id`` ends a sequence when generated; the end token itself is not returned (book 5.3).
  It may be one id or a collection of ids (any of them ends the sequence): chat models end a
  turn with tokens other than end-of-text, e.g. Llama 3's ``<|eot_id|>``.
* ``stop_strings`` end a sequence once its decoded new text contains one of them (needs
  ``tokenizer``); the token completing the stop string is returned, so trim the text if you
  do not want it.
* Prompts longer than the context window are read through their last ``context_length``
  tokens, as in the book; the returned sequence still starts with the whole prompt.
* The model runs in eval mode under ``torch.inference_mode``; its mode is restored after.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import torch
from torch import nn

from scratchllm.errors import DataError
from scratchllm.generate.loop import (
    as_batch,
    check_vocab,
    check_count,
    check_eos,
    decode_steps,
    eval_mode,
    left_pad,
    make_picker,
)
from scratchllm.generate.stats import DecodeStats
from scratchllm.generate.stopping import StopState, normalize_stop_strings
from scratchllm.model.inputs import model_device

TokenIds = list[int] | torch.Tensor
EosIds = int | Collection[int] | None


def generate(model: nn.Module, token_ids: TokenIds, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             eos_id: EosIds = None, use_cache: bool = True, *,
             min_p: float | None = None, stop_strings: str | Sequence[str] | None = None,
             tokenizer: object | None = None, seed: int | None = None,
             generator: torch.Generator | None = None) -> TokenIds:
    """Continue ``token_ids``; return the prompt followed by the new tokens, in the input's type.

    A list gives a list; a (T,) tensor a (T + n,) tensor; a (B, T) tensor a (B, T + n)
    tensor on the input's device (book ``generate_text_simple``). In a batch, rows that stop
    early are filled with the first ``eos_id`` (or the tokenizer's end token, else 0) up to the
    longest row; ``n`` is the number of tokens of that longest row.
    """
    check_count(max_new_tokens)
    eos_ids = check_eos(eos_id)
    stops = normalize_stop_strings(stop_strings, tokenizer)
    device = model_device(model)
    batch = as_batch(token_ids, device)
    pick = make_picker(temperature, top_k, top_p, min_p, seed, generator, device)
    states = _stop_states(len(batch), eos_ids, stops, tokenizer)
    finished: set[int] = set()
    with eval_mode(model):
        steps, kept = _collect(decode_steps(model, batch, max_new_tokens, pick,
                                            use_cache=use_cache, finished=finished),
                               states, len(batch), device, finished)
    if not isinstance(token_ids, torch.Tensor):  # a list (or tuple) of ids
        return list(token_ids) + steps[0][: kept[0]].tolist()
    new = steps[:, : max(kept, default=0)]
    for row, count in enumerate(kept):
        new[row, count:] = _fill_value(eos_ids, tokenizer)
    out = torch.cat([batch, new], dim=1).to(token_ids.device, token_ids.dtype)
    return out if token_ids.dim() == 2 else out[0]


def generate_batch(model: nn.Module, prompts: list[list[int]], max_new_tokens: int,
                   temperature: float = 0.0, top_k: int | None = None,
                   top_p: float | None = None, eos_id: EosIds = None,
                   use_cache: bool = True, *, min_p: float | None = None,
                   stop_strings: str | Sequence[str] | None = None,
                   tokenizer: object | None = None, seed: int | None = None,
                   generator: torch.Generator | None = None) -> list[list[int]]:
    """Continue several prompts of different lengths at once; return each one's NEW tokens.

    Prompts are left-padded and masked, so greedy decoding gives each prompt exactly the
    tokens it would get alone. Finished rows ride along until every row is done. The model
    is used as it is: open it with ``open_model(..., inference_only=True, decode_rows=N)``
    (or call ``scratchllm.model.decode_layout.prepare_decoding(model, N)`` on a model only
    used for inference) for the CPU layout in which N rows share each read of the weights.
    """
    check_count(max_new_tokens)
    eos_ids = check_eos(eos_id)
    stops = normalize_stop_strings(stop_strings, tokenizer)
    device = model_device(model)
    ids, mask = left_pad(prompts, device)
    pick = make_picker(temperature, top_k, top_p, min_p, seed, generator, device)
    states = _stop_states(len(prompts), eos_ids, stops, tokenizer)
    finished: set[int] = set()
    with eval_mode(model):
        steps, kept = _collect(decode_steps(model, ids, max_new_tokens, pick,
                                            attention_mask=mask, use_cache=use_cache,
                                            finished=finished),
                               states, len(prompts), device, finished)
    rows = steps.tolist()
    return [row[:count] for row, count in zip(rows, kept)]


def stream(model: nn.Module, token_ids: TokenIds, max_new_tokens: int,
           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           eos_id: EosIds = None, use_cache: bool = True, *,
           min_p: float | None = None, stop_strings: str | Sequence[str] | None = None,
           tokenizer: object | None = None, seed: int | None = None,
           generator: torch.Generator | None = None,
           stats: DecodeStats | None = None) -> Iterator[int] | Iterator[str]:
    """Yield each new token id as soon as it is chosen, or text pieces if ``tokenizer`` is given.

    Text pieces hold only complete UTF-8 characters (a character split over two tokens
    comes out once both arrived); joined, they equal ``tokenizer.decode(new_ids)``. One
    sequence only: a list, a (T,) tensor or a (1, T) tensor. Arguments are checked now; the
    model stays in eval mode until the iterator is exhausted or closed. ``stats`` (a
    ``DecodeStats``) records the time to the first token and the decode rate.
    """
    check_count(max_new_tokens)
    eos_ids = check_eos(eos_id)
    stops = normalize_stop_strings(stop_strings, tokenizer)
    device = model_device(model)
    batch = as_batch(token_ids, device)
    check_vocab(batch, model.config.vocab_size)
    if batch.shape[0] != 1:
        raise DataError(
            f"stream() continues one sequence, got a batch of {batch.shape[0]}; use "
            "generate_batch() for several prompts"
        )
    pick = make_picker(temperature, top_k, top_p, min_p, seed, generator, device)
    state = StopState(eos_ids, stops, tokenizer)
    return _stream(model, batch, max_new_tokens, pick, use_cache, state, tokenizer is not None,
                   stats)


def _stream(model, batch, max_new_tokens, pick, use_cache, state: StopState,
            as_text: bool, stats: DecodeStats | None) -> Iterator[int] | Iterator[str]:
    if stats is not None:
        stats.begin(batch.shape[1])
    with eval_mode(model):
        for next_ids in decode_steps(model, batch, max_new_tokens, pick, use_cache=use_cache):
            token = int(next_ids[0])  # on a GPU this waits for the step: the clock is honest
            if stats is not None:
                stats.token()
            step = state.step(token)
            if step.keep:
                if not as_text:
                    yield token
                elif step.text:
                    yield step.text
            if step.stop:
                break
    tail = state.flush() if as_text else ""
    if tail:
        yield tail


def _stop_states(batch: int, eos_ids: tuple[int, ...], stops: list[str],
                 tokenizer: object | None) -> list[StopState] | None:
    """One stop tracker per row, or None when nothing can stop a row early (then no step
    reads its tokens back or loops over its rows in Python)."""
    if not eos_ids and not stops:
        return None
    return [StopState(eos_ids, stops, tokenizer if stops else None) for _ in range(batch)]


def _collect(steps: Iterator[torch.Tensor], states: list[StopState] | None, batch: int,
             device: torch.device, finished: set[int] | None = None
             ) -> tuple[torch.Tensor, list[int]]:
    """Run the loop; return (B, steps) tokens and how many of them each row keeps.

    Without stop conditions no step reads the tokens back to the host, so a GPU never waits.
    A row that stops goes into ``finished``, the loop's signal to drop it from the batch.
    """
    columns: list[torch.Tensor] = []
    kept = [0] * batch
    for next_ids in steps:
        columns.append(next_ids)
        if states is None:
            continue
        for row, token in enumerate(next_ids.tolist()):
            state = states[row]
            if state.done:
                continue
            step = state.step(token)
            kept[row] += step.keep
            if state.done and finished is not None:
                finished.add(row)
        if all(state.done for state in states):
            break
    if states is None:
        kept = [len(columns)] * batch
    if not columns:
        return torch.empty((batch, 0), dtype=torch.long, device=device), kept
    return torch.stack(columns, dim=1), kept


def _fill_value(eos_ids: tuple[int, ...], tokenizer: object | None) -> int:
    if eos_ids:
        return eos_ids[0]
    return int(getattr(tokenizer, "eot_id", 0) or 0) if tokenizer is not None else 0
