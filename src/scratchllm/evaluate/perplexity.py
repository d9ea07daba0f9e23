"""Perplexity: exp(mean next-token cross-entropy), on plain text or on instruction answers (book 5.1.2).

``text_perplexity`` slides a window over a long token sequence. With ``stride == window``
the windows do not overlap, as the book's ``calc_loss_loader`` with ``stride=max_length``;
a smaller stride gives each token more context, and every token is still scored exactly
once (the ones already scored by the previous window are skipped). The loss is the mean over
*tokens*, so a short last window weighs only as much as its tokens.

``instruction_perplexity`` scores only the responses (and their end-of-text) given the
prompts: how well a fine-tuned model predicts the reference answers.

A loss per token depends on the tokenizer: a model with bigger tokens has fewer, harder
predictions to make. ``loss_per_char`` (= loss x tokens / characters, nats per character of the
text) is the whole text's cross-entropy spread over its characters, so a character-level model
and a BPE model of the same text can be compared directly (the speedrun benchmark does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.data.instruction import IGNORE_INDEX, encode_example, instruction_collate
from scratchllm.errors import ConfigError, DataError


@dataclass
class PerplexityResult:
    loss: float          # mean cross-entropy per scored token (nats)
    perplexity: float
    tokens: int          # number of scored tokens
    characters: int | None = None  # characters the scored tokens spell (None: ids only)

    @property
    def loss_per_char(self) -> float | None:
        """Total cross-entropy over the text's characters (nats/char): tokenizer-independent."""
        if not self.characters:
            return None
        return self.loss * self.tokens / self.characters

    def to_dict(self) -> dict[str, float | int | None]:
        return {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens,
                "characters": self.characters, "loss_per_char": self.loss_per_char}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def summed_nll(model: nn.Module, batches, device: torch.device) -> tuple[float, int]:
    """Total cross-entropy and number of scored targets over (inputs, targets) batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            logits = model(inputs)
            total += float(F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                           ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total, count


def _result(total: float, count: int) -> PerplexityResult:
    if count == 0:
        raise DataError("no tokens to score; the text or responses are empty")
    loss = total / count
    return PerplexityResult(loss, math.exp(loss) if loss < 700 else float("inf"), count)


def sliding_windows(ids: torch.Tensor, window: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, window) inputs and targets; each target token appears unmasked in exactly one row."""
    inputs, targets = [], []
    scored_until = 0  # global index of the last target already scored
    last = ids.numel() - 1
    for begin in range(0, last, stride):
        end = min(begin + window, last)  # inputs ids[begin:end], targets ids[begin+1:end+1]
        x = torch.zeros(window, dtype=torch.long)
        y = torch.full((window,), IGNORE_INDEX, dtype=torch.long)
        x[:end - begin] = ids[begin:end]
        y[:end - begin] = ids[begin + 1:end + 1]
        fresh = max(0, scored_until - begin)  # targets up to scored_until were done before
        y[:fresh] = IGNORE_INDEX
        inputs.append(x)
        targets.append(y)
        scored_until = end
        if end == last:
            break
    return torch.stack(inputs), torch.stack(targets)


def text_perplexity(model: nn.Module, token_ids: Sequence[int] | torch.Tensor | str, *,
                    tokenizer: Any = None, window: int | None = None, stride: int | None = None,
                    batch_size: int = 8, characters: int | None = None) -> PerplexityResult:
    """Perplexity of ``model`` on a long text (or its token ids), read in sliding windows.

    ``window`` defaults to the model's context length, ``stride`` to ``window``.
    A string needs ``tokenizer``; ``<|endoftext|>`` in it counts as the separator token.
    ``characters`` gives ``loss_per_char`` for token ids: the characters the scored tokens
    spell. For a string they are counted here: the text less its first token's characters,
    which nothing predicts (so a character-level model's loss per char is its loss).
    """
    if isinstance(token_ids, str):
        if tokenizer is None:
            raise ConfigError("text_perplexity got a string; pass tokenizer= to encode it")
        text = token_ids
        token_ids = tokenizer.encode(text, allowed_special="all")
        characters = len(text) - len(tokenizer.decode(token_ids[:1]))
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten().cpu()
    if ids.numel() < 2:
        raise DataError(f"the text has {ids.numel()} token(s); perplexity needs at least 2")
    context = model.config.context_length
    window = window or context
    stride = stride or window
    if not 1 <= window <= context or not 1 <= stride <= window or batch_size < 1:
        raise ConfigError(f"need 1 <= stride ({stride}) <= window ({window}) <= context length "
                          f"({context}) and batch_size >= 1")
    inputs, targets = sliding_windows(ids, window, stride)
    batches = ((inputs[i:i + batch_size], targets[i:i + batch_size])
               for i in range(0, len(inputs), batch_size))
    result = _result(*summed_nll(model, batches, _device(model)))
    result.characters = characters
    return result


def instruction_perplexity(model: nn.Module, tokenizer: Any, entries: Sequence[dict[str, Any]], *,
                           style: str = "alpaca", response_key: str = "output",
                           batch_size: int = 8) -> PerplexityResult:
    """Perplexity of the reference responses (+ end-of-text) given their prompts (book 7.2 format).

    Prompt and response header are masked; examples longer than the context are truncated.
    """
    if not entries:
        raise DataError("no instruction entries to score")
    items = []
    for entry in entries:
        item = encode_example(entry, tokenizer, style, response_key=response_key)
        item["mask_len"] = item["prompt_len"]
        items.append(item)
    collate = partial(instruction_collate, pad_id=tokenizer.eot_id, mask_prompt=True,
                      max_length=model.config.context_length)
    batches = (collate(items[i:i + batch_size]) for i in range(0, len(items), batch_size))
    return _result(*summed_nll(model, batches, _device(model)))
