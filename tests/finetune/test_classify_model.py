"""The classifier model (book 6.5): new head, last real token, trainable parts, save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError, DataError
from scratchllm.finetune.classifier_model import (
    attach_classifier_head, classifier_metadata, classify_texts, last_token_logits,
    load_classifier, save_classifier, set_trainable,
)
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.lora import lora_layers
from scratchllm.tokenizers import GPT2Tokenizer
from scratchllm.weights.model_dir import save_model_dir


def classifier(num_classes: int = 2, **overrides) -> GPTModel:
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("tiny", **overrides))
    return attach_classifier_head(model, num_classes).eval()


def test_head_replaced_with_class_scores():
    model = classifier(3)
    assert isinstance(model.out_head, nn.Linear)
    assert (model.out_head.in_features, model.out_head.out_features) == (64, 3)
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 3)
    with pytest.raises(ConfigError, match="num_classes"):
        attach_classifier_head(GPTModel(GPTConfig.preset("tiny")), 1)


def test_reads_last_real_token_not_padding():
    """Right padding moves the last position onto a pad token; gathering by length must give
    exactly the scores of each text run alone."""
    model = classifier()
    short, long_ = [5, 17, 300, 42], [7, 8, 9, 10, 11, 12, 13]
    pad = 50256
    batch = torch.tensor([short + [pad] * 3, long_])
    lengths = torch.tensor([4, 7])
    got = last_token_logits(model, batch, lengths)
    alone_short = model(torch.tensor([short]))[0, -1]
    alone_long = model(torch.tensor([long_]))[0, -1]
    torch.testing.assert_close(got[0], alone_short, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], alone_long, atol=1e-5, rtol=0)
    # the book's logits[:, -1] reads a pad token for the short row and differs
    book_style = last_token_logits(model, batch)
    assert not torch.allclose(book_style[0], alone_short, atol=1e-4)
    with pytest.raises(DataError, match="lengths"):
        last_token_logits(model, batch, torch.tensor([0, 7]))


def _trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_trainable_modes():
    model = set_trainable(classifier(), "head")
    assert _trainable_names(model) == {"out_head.weight", "out_head.bias"}

    model = set_trainable(classifier(), "last-block")
    names = _trainable_names(model)
    assert {"final_norm.weight", "out_head.weight"} <= names
    assert all(n.startswith(("trf_blocks.1.", "final_norm.", "out_head.")) for n in names)
    assert sum(p.numel() for n, p in model.named_parameters() if n in names) == \
        sum(p.numel() for p in model.trf_blocks[1].parameters()) + 2 * 64 + 2 * 64 + 2

    model = set_trainable(classifier(), "all")
    assert _trainable_names(model) == {n for n, _ in model.named_parameters()}

    model = set_trainable(classifier(), "lora", lora_rank=2)
    names = _trainable_names(model)
    assert names == {n for n in names if ".lora_" in n} | {"out_head.weight", "out_head.bias"}
    assert len(lora_layers(model)) == 4 * 2 and "out_head" not in lora_layers(model)

    with pytest.raises(ConfigError, match="head, last-block, all, lora"):
        set_trainable(classifier(), "everything")


def test_save_load_classify_round_trip(tmp_path, shared_data):
    tokenizer = GPT2Tokenizer(shared_data / "gpt2")
    model = classifier(tie_weights=True)  # the tied head is replaced, so nothing stays tied
    path = save_classifier(tmp_path / "clf", model, tokenizer,
                           classifier_metadata(["ham", "spam"], tokenizer.eot_id, 12))
    loaded, tok, info = load_classifier(tmp_path / "clf")
    assert info["labels"] == ["ham", "spam"] and info["max_length"] == 12
    assert path == tmp_path / "clf"
    ids = torch.tensor([tokenizer.encode("free prize now")])
    torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)

    texts = ["free prize now", "see you at the cinema tonight, ok?"]
    results = classify_texts(loaded, tok, texts, info["labels"])
    for text, (label, prob) in zip(texts, results):
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([tokenizer.encode(text)]))[0, -1], -1)
        assert label == ["ham", "spam"][int(probs.argmax())]
        assert prob == pytest.approx(float(probs.max()), abs=1e-5)
        assert 0.5 <= prob <= 1.0


def test_load_refuses_plain_language_model(tmp_path):
    save_model_dir(tmp_path / "lm", GPTModel(GPTConfig.preset("tiny")), None)
    with pytest.raises(CheckpointError, match="not a classifier"):
        load_classifier(tmp_path / "lm")
