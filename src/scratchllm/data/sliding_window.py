"""Input-target pairs from one token stream with a sliding window (book 2.6).

An LLM learns to predict the next token, so every window of ``max_length`` tokens is paired
with the same window shifted one token to the right. ``stride`` is how far the window moves:
``stride == max_length`` gives non-overlapping windows (the book's pretraining setting),
``stride == 1`` gives every possible window.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from scratchllm.errors import ConfigError, DataError, TokenizerError

EOT_TEXT = "<|endoftext|>"


def separator_tokens(tokenizer: Any) -> set[str]:
    """The end-of-text token(s) training text may contain as a document separator: GPT-2's
    ``<|endoftext|>`` and the tokenizer's own end of text (Llama 3's ``<|end_of_text|>``),
    those of them it has; asking for one it lacks would make ``encode`` refuse the text."""
    specials = dict(getattr(tokenizer, "special_tokens", None) or {})
    try:
        eot_id = getattr(tokenizer, "eot_id", None)
    except TokenizerError:  # a Hugging Face tokenizer that names no end of text
        eot_id = None
    return {text for text, token_id in specials.items() if text == EOT_TEXT or token_id == eot_id}


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def as_token_tensor(token_ids: Any) -> torch.Tensor:
    """Turn a list / numpy array / 1-D tensor of token ids into a 1-D int64 tensor."""
    if isinstance(token_ids, torch.Tensor):
        if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
            raise DataError(f"token ids must be integers, got dtype {token_ids.dtype}")
        tensor = token_ids.detach().to(torch.long)
    else:
        array = np.asarray(token_ids)
        if array.size == 0:
            array = array.astype(np.int64)
        if array.dtype.kind not in "iu":
            raise DataError(f"token ids must be integers, got {array.dtype}; encode text first")
        tensor = torch.from_numpy(array.astype(np.int64))
    if tensor.dim() != 1:
        raise DataError(
            f"token ids must be 1-D, got shape {tuple(tensor.shape)}; flatten them first"
        )
    return tensor


def num_windows(num_tokens: int, max_length: int, stride: int) -> int:
    """How many full (input, target) windows fit: each needs ``max_length + 1`` tokens."""
    if num_tokens < max_length + 1:
        return 0
    return (num_tokens - max_length - 1) // stride + 1


class SlidingWindowDataset(Dataset):
    """Windows ``(ids[s : s+L], ids[s+1 : s+L+1])`` for ``s = 0, stride, ...`` (book 2.6)."""

    def __init__(self, token_ids: Any, max_length: int, stride: int) -> None:
        self.max_length = _check_positive("max_length", max_length)
        self.stride = _check_positive("stride", stride)
        self.token_ids = as_token_tensor(token_ids)
        available = self.token_ids.numel()
        if available < self.max_length + 1:
            raise DataError(
                f"text too short for one training window: {available} tokens available, "
                f"{self.max_length + 1} needed (max_length={self.max_length} plus 1 for the "
                "shifted target); use a smaller max_length or more text"
            )
        self._len = num_windows(available, self.max_length, self.stride)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        start = index * self.stride
        chunk = self.token_ids[start : start + self.max_length + 1]
        return chunk[:-1].clone(), chunk[1:].clone()


def _encode(text: str, tokenizer: Any) -> list[int]:
    """Encode with the project tokenizer; ``<|endoftext|>`` (or the tokenizer's own end of
    text) in the text is the separator token."""
    if tokenizer is None or isinstance(tokenizer, str):
        from scratchllm.tokenizers import get_tokenizer

        tokenizer = get_tokenizer(tokenizer or "gpt2")
    return tokenizer.encode(text, allowed_special=separator_tokens(tokenizer))


def create_dataloader(
    text_or_ids: str | Sequence[int] | np.ndarray | torch.Tensor,
    *,
    tokenizer: Any = None,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int | None = None,
) -> DataLoader:
    """Tokenize (if given text) and batch sliding windows (book 2.6).

    ``tokenizer`` is a tokenizer object or name (default ``"gpt2"``). With ``seed`` set, the
    shuffle order comes from a private ``torch.Generator``, so two loaders built with the same
    seed yield the same batches regardless of the global RNG.
    """
    batch_size = _check_positive("batch_size", batch_size)
    if isinstance(text_or_ids, str):
        if not text_or_ids:
            raise DataError("text is empty; give some text to build training windows from")
        text_or_ids = _encode(text_or_ids, tokenizer)
    dataset = SlidingWindowDataset(text_or_ids, max_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise DataError(
            f"only {len(dataset)} windows but batch_size={batch_size} with drop_last=True leaves "
            "no batches; use a smaller batch_size/max_length/stride, more text, or drop_last=False"
        )
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
    )


def train_val_split(token_ids_or_text: Any, train_ratio: float = 0.9) -> tuple[Any, Any]:
    """Split at ``int(train_ratio * len)``, keeping order, as the book does before ch5 training.

    Works on text (split by characters, like the book) or on token ids (lists, arrays,
    tensors); returns two pieces of the same type.
    """
    if not 0.0 < float(train_ratio) < 1.0:
        raise ConfigError(f"train_ratio must be between 0 and 1 (exclusive), got {train_ratio!r}")
    length = len(token_ids_or_text)
    if length < 2:
        raise DataError(f"need at least 2 characters/tokens to split, got {length}; give more data")
    split = min(max(int(train_ratio * length), 1), length - 1)
    return token_ids_or_text[:split], token_ids_or_text[split:]
