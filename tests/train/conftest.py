"""Fixtures for the pretraining tests: a small Hugging Face tokenizer, a short story file, and
the command line of a seconds-long Llama-family run that uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py: one_thread)."""


@pytest.fixture(scope="session")
def story_file(tmp_path_factory) -> Path:
    """The first 6000 characters of the bundled story as a plain text file."""
    from scratchllm.train.batches import embedded_verdict_text

    path = tmp_path_factory.mktemp("story") / "story.txt"
    path.write_text(embedded_verdict_text()[:6000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def hf_tokenizer_file(tmp_path_factory) -> Path:
    """A 300-token byte-level BPE trained with Hugging Face ``tokenizers`` on the story, saved
    as tokenizer.json + tokenizer_config.json (what a Llama/Qwen download brings)."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from scratchllm.train.batches import embedded_verdict_text

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator([embedded_verdict_text()], trainer=trainer)
    out = tmp_path_factory.mktemp("hf_tokenizer")
    backend.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return out / "tokenizer.json"


@pytest.fixture
def llama_args(story_file, hf_tokenizer_file):
    """``llama_args(out, *extra)``: `scratchllm pretrain` arguments for a tiny-llama run with
    the HF tokenizer on the story file (about 10 ms a step on one CPU thread)."""
    def build(out: Path, *extra: str) -> list[str]:
        return ["pretrain", "--preset", "tiny-llama", "--data", str(story_file),
                "--set", f"tokenizer={hf_tokenizer_file}", "--out", str(out),
                "--max-steps", "6", "--batch-size", "2", "--micro-batch-size", "2",
                "--context-length", "16", "--lr", "1e-3", "--eval-every", "3", "--save-every", "3",
                "--device", "cpu", "--precision", "fp32", "--seed", "11",
                "--set", "sample_tokens=0", "--set", "eval_batches=1", "--set", "warmup_steps=1",
                "--set", "log_every=1", *extra]
    return build
