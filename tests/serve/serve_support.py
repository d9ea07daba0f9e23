"""Helpers the serve tests import (a uniquely named module: ``from conftest import`` may pick
up another folder's conftest.py)."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
from torch import nn

from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.tokenizers.bpe import BPETokenizer
from scratchllm.train.batches import embedded_verdict_text
from scratchllm.weights.model_dir import save_model_dir


@functools.lru_cache(maxsize=1)
def small_tokenizer() -> BPETokenizer:
    """A 400-token byte-level BPE: the output layer of GPT-2's 50,257 tokens would be most of
    every step's time."""
    return BPETokenizer.train(embedded_verdict_text()[:6000], vocab_size=400)


def tiny_model_dir(path: Path, seed: int = 0, context_length: int = 512) -> Path:
    torch.manual_seed(seed)
    tokenizer = small_tokenizer()
    config = GPTConfig.preset("tiny", context_length=context_length,
                              vocab_size=tokenizer.vocab_size)
    save_model_dir(path, GPTModel(config), tokenizer)
    return path


class SlowModel(nn.Module):
    """The tiny model, 20 ms a forward pass: long enough to see requests wait and leave."""

    def __init__(self, inner: nn.Module, delay: float = 0.02) -> None:
        super().__init__()
        self.inner, self.config, self.delay = inner, inner.config, delay

    def new_cache(self, max_length=None):
        return self.inner.new_cache(max_length)

    def forward(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.inner(*args, **kwargs)
