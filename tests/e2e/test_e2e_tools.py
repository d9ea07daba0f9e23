"""``info``, ``prepare``, ``plot`` and ``evaluate perplexity`` as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_info_counts_parameters(cli_many):
    text, as_json = cli_many([["info", "--preset", "gpt2-small"],
                              ["info", "--preset", "gpt2-xl", "--tie-weights", "--json"]])
    assert "163,009,536" in text.stdout  # the book's count for the untied 124M model (4.6)
    info = json.loads(as_json.stdout)
    v, c, d, n = 50257, 1024, 1600, 48
    # by hand: embeddings; per block 4d^2 attention (+ out bias), 8d^2 + 5d MLP, 2 LayerNorms
    assert info["parameters"]["total"] == v * d + c * d + n * (12 * d * d + 10 * d) + 2 * d


def test_prepare_writes_the_gpt2_token_ids(cli, corpus_file, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from scratchllm.tokenizers.byte_level import find_gpt2_files

    out = tmp_path / "prepared"
    proc = cli(["prepare", corpus_file, "--out", out, "--workers", "1", "--val-fraction", "0"])
    assert str(out) in proc.stdout
    ids = np.fromfile(out / "train.bin", dtype="<u2").tolist()
    encoder, merges = find_gpt2_files()  # OpenAI's files, read by the Rust tokenizers library
    reference = Tokenizer(models.BPE.from_file(str(encoder), str(merges)))
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    expected = reference.encode(corpus_file.read_text(encoding="utf-8")).ids + [50256]
    assert ids == expected  # the document, then its end-of-text separator
    assert json.loads((out / "train.json").read_text())["num_tokens"] == len(expected)


def test_plot_draws_the_runs_losses(cli, pretrain_run, tmp_path):
    png = tmp_path / "loss.png"
    cli(["plot", pretrain_run, "--out", png])
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_perplexity_matches_transformers_loss(cli, gpt2_hf_dirs, corpus_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = gpt2_hf_dirs["vocab-merges"]
    text = tmp_path / "held_out.txt"
    text.write_text(corpus_file.read_text(encoding="utf-8")[:700], encoding="utf-8")
    window = 32
    proc = cli(["evaluate", "perplexity", "--model", directory, "--text", text,
                "--window", window, "--batch-size", 4])
    result = json.loads(proc.stdout.splitlines()[0])

    ids = AutoTokenizer.from_pretrained(directory)(text.read_text(encoding="utf-8")).input_ids
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    total, count = 0.0, 0
    with torch.no_grad():  # non-overlapping windows: each token after the first scored once
        for begin in range(0, len(ids) - 1, window):
            piece = torch.tensor([ids[begin:begin + window + 1]])
            logits = model(piece[:, :-1]).logits[0]
            total += float(torch.nn.functional.cross_entropy(logits, piece[0, 1:], reduction="sum"))
            count += piece.shape[1] - 1
    assert result["tokens"] == count == len(ids) - 1
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(np.exp(total / count), rel=1e-5)
