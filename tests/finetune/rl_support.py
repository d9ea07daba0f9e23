"""Helpers for the RL tests: a tiny byte-level GPT, prompts, and a programmatic reward.

The model's vocabulary is the 256 bytes plus ``<|endoftext|>`` (a BPE trained with no
merges), so a token is a character and a reward on characters is a reward on tokens. A
random one-block model samples nearly uniformly: about 26 of 257 tokens are lowercase letters.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import BPETokenizer
from scratchllm.weights.model_dir import save_model_dir

# 20 prompts: the 85/5/10 split leaves 17 for training and holds "ok", "up" out as the test
# split (answered into test_responses.json at the end of a run).
PROMPTS = ["hi", "tell me", "write", "go on", "say it", "a b", "yes", "no", "why", "where",
           "who", "how", "when", "what", "it", "so", "be", "ok", "up", "do"]
GOOD = frozenset(string.ascii_lowercase)


def lowercase_fraction(prompt: str, response: str) -> float:
    """The toy reward: the share of the answer's characters that are lowercase letters."""
    return sum(c in GOOD for c in response) / max(1, len(response))


def byte_tokenizer() -> BPETokenizer:
    return BPETokenizer.train("abc", 257)  # 256 byte tokens + <|endoftext|>, no merges


def tiny_byte_model(directory: Path, *, seed: int = 0, context: int = 48) -> Path:
    torch.manual_seed(seed)
    config = GPTConfig.preset("tiny", vocab_size=257, n_layers=1, emb_dim=32,
                              context_length=context)
    return save_model_dir(directory, GPTModel(config), byte_tokenizer())


def prompts_file(directory: Path) -> Path:
    path = directory / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


# Small, fast settings for a toy run (raw prompts: the model was never instruction-tuned).
TOY = dict(prompt_style="raw", device="cpu", precision="fp32", progress=False,
           max_new_tokens=8, temperature=1.0, missing_eos_penalty=0.0, lr=1e-2)
