"""Loss per character (nats/char): token loss x tokens / characters, comparable across tokenizers."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from scratchllm.cli.main import main
from scratchllm.evaluate.perplexity import text_perplexity
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import BPETokenizer
from scratchllm.weights.model_dir import save_model_dir

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 3


def tiny_model(vocab_size: int) -> GPTModel:
    torch.manual_seed(5)
    return GPTModel(GPTConfig.preset("tiny", vocab_size=vocab_size, context_length=32)).eval()


def test_character_level_loss_per_char_is_the_loss():
    chars = BPETokenizer.train(TEXT, 257)  # no merges: one token per byte = per ASCII character
    assert len(chars.encode(TEXT)) == len(TEXT)
    result = text_perplexity(tiny_model(257), TEXT, tokenizer=chars, batch_size=4)
    assert result.tokens == result.characters == len(TEXT) - 1
    assert result.loss_per_char == pytest.approx(result.loss, rel=1e-12)


def test_bpe_loss_per_char_is_total_nats_over_the_scored_characters():
    bpe = BPETokenizer.train(TEXT, 300)
    ids = bpe.encode(TEXT)
    assert len(ids) < 0.7 * len(TEXT)  # merges made multi-character tokens
    model = tiny_model(bpe.vocab_size)
    result = text_perplexity(model, TEXT, tokenizer=bpe, window=32, batch_size=3)
    # By hand: every token after the first, predicted from its own 32-token window.
    total = 0.0
    with torch.no_grad():
        for begin in range(0, len(ids) - 1, 32):
            piece = torch.tensor([ids[begin:begin + 33]])
            logits = model(piece[:, :-1])[0]
            total += F.cross_entropy(logits, piece[0, 1:], reduction="sum").item()
    scored_chars = sum(len(bpe.decode([i])) for i in ids[1:])
    assert result.tokens == len(ids) - 1
    assert result.characters == scored_chars
    assert result.loss == pytest.approx(total / (len(ids) - 1), rel=1e-5)
    assert result.loss_per_char == pytest.approx(total / scored_chars, rel=1e-5)
    assert result.loss_per_char < result.loss  # more than one character per token


def test_token_ids_alone_have_no_characters():
    result = text_perplexity(tiny_model(257), list(range(40)))
    assert result.characters is None and result.loss_per_char is None
    given = text_perplexity(tiny_model(257), list(range(40)), characters=78)
    assert given.loss_per_char == pytest.approx(given.loss * 39 / 78)


def test_cli_json_prints_one_report_with_loss_per_char(tmp_path, capsys):
    bpe = BPETokenizer.train(TEXT, 300)
    save_model_dir(tmp_path / "m", tiny_model(bpe.vocab_size), bpe)
    (tmp_path / "val.txt").write_text(TEXT, encoding="utf-8")
    code = main(["evaluate", "perplexity", "--model", str(tmp_path / "m"), "--text",
                 str(tmp_path / "val.txt"), "--device", "cpu", "--json"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert set(report) == {"loss", "perplexity", "tokens", "characters", "loss_per_char"}
    assert report["tokens"] == len(bpe.encode(TEXT)) - 1
    assert report["characters"] == len(TEXT) - len(bpe.decode(bpe.encode(TEXT)[:1]))
    assert report["loss_per_char"] == pytest.approx(
        report["loss"] * report["tokens"] / report["characters"], rel=1e-12)
