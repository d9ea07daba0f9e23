"""Tiny models and data shared by the fine-tuning loop tests (dropout on, so RNG state matters)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import GPT2Tokenizer
from scratchllm.weights.model_dir import save_model_dir


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py: one_thread)."""


@pytest.fixture(scope="session")
def gpt2_tok(shared_data):
    return GPT2Tokenizer(shared_data / "gpt2")


@pytest.fixture(scope="session")
def dropout_model_dir(tmp_path_factory, gpt2_tok):
    """A one-block GPT with dropout 0.2: resuming must restore the dropout masks' RNG."""
    torch.manual_seed(5)
    config = GPTConfig.preset("tiny", n_layers=1, emb_dim=32, drop_rate=0.2, context_length=96)
    return save_model_dir(tmp_path_factory.mktemp("dropout") / "base", GPTModel(config), gpt2_tok)


@pytest.fixture(scope="session")
def instruct_file(tmp_path_factory, shared_data):
    entries = json.loads((shared_data / "instruction" / "instruction-data.json").read_text("utf-8"))
    path = tmp_path_factory.mktemp("sft") / "subset.json"
    path.write_text(json.dumps(entries[:20]), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def preference_file(tmp_path_factory, shared_data):
    entries = json.loads((shared_data / "instruction" / "instruction-data-with-preference.json")
                         .read_text("utf-8"))
    path = tmp_path_factory.mktemp("dpo") / "pairs.json"
    path.write_text(json.dumps(entries[:20]), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def toy_labels_file(tmp_path_factory):
    """40 short labelled texts (the label is the last word's sentiment)."""
    rng = random.Random(1)
    words = ["red", "blue", "table", "river", "stone", "cloud"]
    lines = []
    for i in range(40):
        label = "pos" if i % 2 else "neg"
        body = " ".join(rng.choice(words) for _ in range(rng.randint(1, 5)))
        lines.append(f"{label}\t{body} {'great' if label == 'pos' else 'awful'}")
    path = tmp_path_factory.mktemp("clf") / "toy.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
