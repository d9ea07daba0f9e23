"""Perplexity against direct per-token computations and the book's calc_loss_loader."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from scratchllm.cli.main import main
from scratchllm.data.instruction import format_prompt
from scratchllm.evaluate.perplexity import instruction_perplexity, sliding_windows, text_perplexity
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import GPT2Tokenizer
from scratchllm.weights.model_dir import save_model_dir


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return GPTModel(GPTConfig.preset("tiny", context_length=16)).eval()


def nll_with_context(model, ids, j, start):
    """-log p(ids[j] | ids[start:j]) by a direct forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[start:j]]))[0, -1]
    return -torch.log_softmax(logits, -1)[ids[j]].item()


def test_non_overlapping_windows_equal_the_books_loader(model):
    from llms_from_scratch.ch05 import calc_loss_loader

    ids = torch.randint(0, 50257, (16 * 6 + 1,)).tolist()
    windows = [(torch.tensor(ids[i:i + 16]), torch.tensor(ids[i + 1:i + 17]))
               for i in range(0, 96, 16)]
    loader = [(torch.stack([w[0] for w in windows[k:k + 2]]),
               torch.stack([w[1] for w in windows[k:k + 2]])) for k in range(0, 6, 2)]
    book = calc_loss_loader(loader, model, torch.device("cpu"))
    ours = text_perplexity(model, ids, batch_size=2)
    assert ours.tokens == 96
    assert ours.loss == pytest.approx(book, rel=1e-5)
    assert ours.perplexity == pytest.approx(math.exp(book), rel=1e-5)


def test_strided_windows_score_each_token_once_with_its_context(model):
    ids = torch.randint(0, 50257, (40,)).tolist()
    result = text_perplexity(model, ids, window=16, stride=5)
    assert result.tokens == 39
    expected = []
    for j in range(1, 40):
        # Token j is scored in the first window [b, b+16) holding it as a target: b = 0, 5, ...
        begin = next(b for b in range(0, 40, 5) if b < j <= b + 16)
        expected.append(nll_with_context(model, ids, j, begin))
    assert result.loss == pytest.approx(sum(expected) / len(expected), rel=1e-5)


def test_sliding_windows_cover_targets_exactly_once():
    ids = torch.arange(23)
    _, targets = sliding_windows(ids, window=8, stride=3)
    scored = targets[targets != -100].tolist()
    assert sorted(scored) == list(range(1, 23))


def test_instruction_perplexity_scores_only_responses(model, shared_data):
    tok = GPT2Tokenizer(shared_data / "gpt2")
    big = GPTModel(GPTConfig.preset("tiny")).eval()
    entries = json.loads((shared_data / "instruction" / "instruction-data.json").read_text("utf-8"))[:3]
    total, count = 0.0, 0
    for entry in entries:
        prompt = tok.encode(format_prompt(entry))
        answer = tok.encode(entry["output"]) + [tok.eot_id]
        full = prompt + answer
        with torch.no_grad():
            logits = big(torch.tensor([full[:-1]]))[0]
        total += F.cross_entropy(logits[len(prompt) - 1:], torch.tensor(answer), reduction="sum").item()
        count += len(answer)
    result = instruction_perplexity(big, tok, entries, batch_size=2)
    assert result.tokens == count
    assert result.loss == pytest.approx(total / count, rel=1e-5)


def test_cli_perplexity_on_text(tmp_path, shared_data, capsys):
    tok = GPT2Tokenizer(shared_data / "gpt2")
    torch.manual_seed(0)
    save_model_dir(tmp_path / "m", GPTModel(GPTConfig.preset("tiny")), tok)
    code = main(["evaluate", "perplexity", "--model", str(tmp_path / "m"), "--text",
                 str(shared_data / "the-verdict.txt"), "--device", "cpu"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.splitlines()[0])
    assert report["tokens"] == len(tok.encode((shared_data / "the-verdict.txt").read_text())) - 1
    assert 1000 < report["perplexity"] < 200000  # an untrained model: close to the vocab size


def test_too_short_text_is_a_clear_error(model):
    from scratchllm.errors import DataError

    with pytest.raises(DataError, match="at least 2"):
        text_perplexity(model, [5])


def test_cli_perplexity_runs_its_linears_through_the_chosen_library(tmp_path, monkeypatch,
                                                                     capsys):
    """``evaluate perplexity`` forwards plain ``nn.Linear`` layers inside ``onednn_linears``
    (oneDNN on AMD CPUs, ``model.cpu_matmul``); both libraries give the same loss."""
    from scratchllm.model import cpu_matmul

    if not cpu_matmul._onednn_runs():
        pytest.skip("this PyTorch build has no oneDNN linear")
    calls = []
    real = cpu_matmul._linear
    monkeypatch.setattr(cpu_matmul, "_linear", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    save_model_dir(tmp_path / "m", GPTModel(GPTConfig.preset("tiny", context_length=32)),
                   GPT2Tokenizer())
    (tmp_path / "t.txt").write_text("Every effort moves you forward, a step at a time. " * 8)
    losses = {}
    for library in ("mkl", "onednn"):
        monkeypatch.setenv(cpu_matmul.ENV, library)
        calls.clear()
        assert main(["evaluate", "perplexity", "--model", str(tmp_path / "m"), "--text",
                     str(tmp_path / "t.txt"), "--json"]) == 0
        losses[library] = json.loads(capsys.readouterr().out.splitlines()[0])["loss"]
        assert bool(calls) == (library == "onednn"), library
    assert losses["onednn"] == pytest.approx(losses["mkl"], rel=1e-5)
