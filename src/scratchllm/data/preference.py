"""Preference data for DPO (the book's ch. 7 bonus): one prompt, a chosen and a rejected response.

An entry is ``{"instruction", "input", "chosen", "rejected"}`` (``output`` may be present too;
it is ignored). Both responses share the prompt, so the prompt and the response header are
masked: DPO compares how likely each *response* is, and identical prompt tokens would only
dilute that comparison. Each response ends with one ``<|endoftext|>``, as in fine-tuning
(book 7.3), so the end of the answer is part of what is preferred.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from scratchllm.data.instruction import (
    IGNORE_INDEX,
    encode_example,
    instruction_collate,
    load_json_entries,
)
from scratchllm.errors import DataError


def load_preference_data(path: str | os.PathLike) -> list[dict[str, Any]]:
    """E.g. instruction-data-with-preference.json (1,100 entries with chosen/rejected)."""
    return load_json_entries(path, ("instruction", "input", "chosen", "rejected"))


class PreferenceDataset(torch.utils.data.Dataset):
    """Items ``{"chosen": {...}, "rejected": {...}}`` of ``encode_example`` dicts.

    ``mask_len`` is the whole prompt including the response header.
    """

    def __init__(self, entries: Sequence[dict[str, Any]], tokenizer: Any,
                 style: str = "alpaca") -> None:
        self.items = []
        for entry in entries:
            pair = {}
            for key in ("chosen", "rejected"):
                item = encode_example(entry, tokenizer, style, response_key=key)
                item["mask_len"] = item["prompt_len"]
                pair[key] = item
            self.items.append(pair)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def preference_collate(batch: Sequence[dict[str, Any]], *, pad_id: int,
                       max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Pad chosen and rejected sequences together to one length.

    Returns ``chosen_inputs``/``chosen_targets``/``chosen_mask`` and the same for
    ``rejected``, each (B, T): targets are ``IGNORE_INDEX`` on prompt and padding, and the
    boolean mask is True exactly on the response tokens (plus the one end-of-text) whose
    log-probabilities DPO sums or averages. One common length lets both halves run through
    the model as a single (2B, T) batch.
    """
    if not batch:
        raise DataError("cannot collate an empty batch")
    items = [pair["chosen"] for pair in batch] + [pair["rejected"] for pair in batch]
    inputs, targets = instruction_collate(items, pad_id=pad_id, max_length=max_length,
                                          mask_prompt=True)
    n = len(batch)
    mask = targets != IGNORE_INDEX
    return {"chosen_inputs": inputs[:n], "chosen_targets": targets[:n], "chosen_mask": mask[:n],
            "rejected_inputs": inputs[n:], "rejected_targets": targets[n:],
            "rejected_mask": mask[n:]}
