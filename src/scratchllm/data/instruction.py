"""Instruction data for supervised fine-tuning (book 7.2-7.3): load, format, split, batch.

An entry is ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` may be empty).
It becomes one token sequence ``prompt + response``; the model learns to continue a prompt
with its response and then one ``<|endoftext|>``.

Prompt styles:

* ``alpaca`` (book 7.2): "Below is an instruction ...\\n\\n### Instruction:\\n{instruction}"
  + "\\n\\n### Input:\\n{input}" (only when there is one) + "\\n\\n### Response:\\n{output}".
* ``phi3`` (book exercise 7.1): "<|user|>\\n{instruction}" + "\\n{input}" (if any) +
  "\\n<|assistant|>:\\n{output}" -- the colon after ``<|assistant|>`` is the book's spelling.
  The tags are plain text to the GPT-2 tokenizer, not special tokens.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scratchllm.errors import ConfigError, DataError, MissingFileError
from scratchllm.utils.json_files import describe_json_error

PROMPT_STYLES = ("alpaca", "phi3")
IGNORE_INDEX = -100  # F.cross_entropy skips targets with this value

_ALPACA_HEADER = ("Below is an instruction that describes a task. "
                  "Write a response that appropriately completes the request.")
_RESPONSE_PREFIX = {"alpaca": "\n\n### Response:\n", "phi3": "\n<|assistant|>:\n"}


def check_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ConfigError(f"unknown prompt style {style!r}; use one of {', '.join(PROMPT_STYLES)}")
    return style


def format_input(entry: dict[str, Any], style: str = "alpaca") -> str:
    """The instruction (and input, if any) without the response header (book ``format_input``)."""
    check_style(style)
    extra = entry.get("input") or ""
    if style == "alpaca":
        text = f"{_ALPACA_HEADER}\n\n### Instruction:\n{entry['instruction']}"
        return text + (f"\n\n### Input:\n{extra}" if extra else "")
    return f"<|user|>\n{entry['instruction']}" + (f"\n{extra}" if extra else "")


def response_prefix(style: str = "alpaca") -> str:
    """The text that introduces the response ("\\n\\n### Response:\\n" for Alpaca)."""
    return _RESPONSE_PREFIX[check_style(style)]


def format_prompt(entry: dict[str, Any], style: str = "alpaca") -> str:
    """What the model is given at generation time: input plus the response header."""
    return format_input(entry, style) + response_prefix(style)


def format_example(entry: dict[str, Any], style: str = "alpaca", response_key: str = "output") -> str:
    """The full training text: prompt followed by the response."""
    return format_prompt(entry, style) + entry[response_key]


# ---------------------------------------------------------------------------- loading
def load_json_entries(path: str | os.PathLike, required: Sequence[str]) -> list[dict[str, Any]]:
    """A JSON list of objects that all have string values for ``required`` keys."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise MissingFileError(f"data file {path} {what}; pass a JSON file holding a list of "
                               f"entries with keys {', '.join(required)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # bad UTF-8/JSON, huge ints, deep nesting
        raise DataError(f"{path} is not valid UTF-8 JSON ({describe_json_error(err)}); fix "
                        "or re-download it") from None
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, expected a list of entries "
                        f"with keys {', '.join(required)}")
    if not data:
        raise DataError(f"{path} holds an empty list; it needs at least one entry")
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: entry {index} is a {type(entry).__name__}, expected an "
                            f"object with keys {', '.join(required)}")
        missing = [k for k in required if k not in entry]
        if missing:
            raise DataError(f"{path}: entry {index} lacks field(s) {missing}; every entry needs "
                            f"{', '.join(required)} (use \"\" for an empty input)")
        wrong = [k for k in required if not isinstance(entry[k], str)]
        if wrong:
            raise DataError(f"{path}: entry {index} field(s) {wrong} are not strings; use text")
    return data


def load_instruction_data(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The book's instruction/input/output JSON list (e.g. instruction-data.json, 1,100 entries)."""
    return load_json_entries(path, ("instruction", "input", "output"))


def split_entries(entries: Sequence[Any], train_frac: float = 0.85, test_frac: float = 0.10, *,
                  shuffle: bool = False, seed: int = 123) -> tuple[list, list, list]:
    """(train, val, test) as in book 7.2: 85% train, 10% test, the rest (5%) validation.

    Like the book, the default keeps the file's order: train = the first 85%, test = the
    next 10%, validation = the remainder (935/110/55 of 1,100). ``shuffle=True`` shuffles a
    copy with ``seed`` first (the file itself is ordered by nothing in particular).
    """
    if not (0 < train_frac < 1 and 0 <= test_frac < 1 and train_frac + test_frac <= 1):
        raise ConfigError(f"split fractions train={train_frac}, test={test_frac} must be in (0, 1) "
                          "and sum to at most 1")
    items = list(entries)
    if shuffle:
        random.Random(seed).shuffle(items)
    n_train = int(len(items) * train_frac)
    n_test = int(len(items) * test_frac)
    train, test = items[:n_train], items[n_train:n_train + n_test]
    val = items[n_train + n_test:]
    return train, val, test


# ---------------------------------------------------------------------------- tokens
def encode_example(entry: dict[str, Any], tokenizer: Any, style: str = "alpaca",
                   response_key: str = "output") -> dict[str, Any]:
    """Token ids of one example and where its parts end.

    Returns ``{"ids", "input_len", "prompt_len"}``: ``input_len`` tokens are instruction+input,
    ``prompt_len`` adds the response header. The prompt (instruction, input and response
    header) is encoded as ONE string, exactly as ``chat``, ``serve`` and an exported chat
    template encode it at inference (a Llama 3 tokenizer merges "?" with the "\n\n" that
    follows); the response is encoded on its own and appended, so the prompt's tokens are
    exactly a prefix of the example's (the masks below rely on it). ``input_len`` counts the
    prompt tokens that lie wholly inside the instruction and input text. User text is
    encoded as ordinary text: a literal "<|endoftext|>" in the data cannot become a control
    token.
    """
    head_text = format_input(entry, style)
    prompt = tokenizer.encode_ordinary(head_text + response_prefix(style))
    body = tokenizer.encode_ordinary(entry[response_key]) if response_key else []
    return {"ids": prompt + body, "input_len": _tokens_within(tokenizer, prompt, head_text),
            "prompt_len": len(prompt)}


def _tokens_within(tokenizer: Any, ids: list[int], text: str) -> int:
    """How many leading ``ids`` decode to a prefix of ``text`` (a token that straddles its
    end, like a merged "?\n\n", is not counted)."""
    k = min(len(ids), len(tokenizer.encode_ordinary(text)))
    while k > 0 and not text.startswith(tokenizer.decode(ids[:k])):
        k -= 1
    return k


class InstructionDataset(torch.utils.data.Dataset):
    """Pre-tokenized examples (book ``InstructionDataset``); items are ``encode_example`` dicts.

    ``mask_len`` is how many leading tokens ``mask_prompt`` hides from the loss: the
    instruction and input, as in book exercise 7.2 (the response header stays learned).
    """

    def __init__(self, entries: Sequence[dict[str, Any]], tokenizer: Any,
                 style: str = "alpaca") -> None:
        self.items = []
        for entry in entries:
            item = encode_example(entry, tokenizer, style)
            item["mask_len"] = item["input_len"]
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def instruction_collate(batch: Sequence[Sequence[int] | dict[str, Any]], *, pad_id: int,
                        ignore_index: int = IGNORE_INDEX, max_length: int | None = None,
                        mask_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch to (inputs, targets) for next-token training (book 7.3 ``custom_collate_fn``).

    Each sequence gets one ``pad_id`` (end of text) appended, is padded with ``pad_id`` to the
    longest in the batch, then shifted by one. In the targets the appended end-of-text is kept
    (the model learns to stop) and every later padding position is ``ignore_index``. The book
    finds padding by comparing values with ``pad_id``; here it is found by length, so an
    end-of-text inside the text itself stays a real target. ``mask_prompt`` also ignores the
    targets that predict prompt tokens (items must then be dicts with ``mask_len``).
    ``max_length`` truncates inputs and targets. Tensors are int64 on the CPU.
    """
    if not batch:
        raise DataError("cannot collate an empty batch")
    seqs = [list(item["ids"]) if isinstance(item, dict) else list(item) for item in batch]
    if any(not seq for seq in seqs):
        raise DataError("an example has no tokens; drop empty entries from the data")
    longest = max(len(seq) for seq in seqs) + 1
    inputs = torch.full((len(seqs), longest - 1), pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), longest - 1), ignore_index, dtype=torch.long)
    for row, (item, seq) in enumerate(zip(batch, seqs)):
        full = torch.tensor(seq + [pad_id], dtype=torch.long)
        inputs[row, :len(seq)] = full[:-1]
        targets[row, :len(seq)] = full[1:]
        if mask_prompt:
            if not isinstance(item, dict) or "mask_len" not in item:
                raise DataError("mask_prompt needs items with 'mask_len' (an InstructionDataset)")
            targets[row, :max(0, item["mask_len"] - 1)] = ignore_index
    if max_length is not None:
        inputs, targets = inputs[:, :max_length], targets[:, :max_length]
    return inputs, targets
