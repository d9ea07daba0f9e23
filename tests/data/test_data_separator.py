"""Training text may separate documents with the tokenizer's own end-of-text token: a
Llama 3-style Hugging Face tokenizer (``<|end_of_text|>``, no ``<|endoftext|>``) used to make
``pretrain`` on a text file and ``prepare --tokenizer DIR`` fail with "unknown special
token(s) ['<|endoftext|>']", though both are documented to take such a tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: E402

from scratchllm.cli.main import main  # noqa: E402
from scratchllm.data.sliding_window import separator_tokens  # noqa: E402
from scratchllm.tokenizers import GPT2Tokenizer, get_tokenizer  # noqa: E402
from scratchllm.train.batches import text_batches  # noqa: E402

TEXT = ("Every effort moves you forward. The quick brown fox jumps over the lazy dog. "
        "Language models predict the next token, one token at a time. ") * 30
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]


@pytest.fixture(scope="module")
def llama_tokenizer_dir(tmp_path_factory):
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("llama-tok")
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}))
    return path


def test_separators_are_the_end_tokens_the_tokenizer_has(llama_tokenizer_dir):
    assert separator_tokens(GPT2Tokenizer()) == {"<|endoftext|>"}
    assert separator_tokens(get_tokenizer(llama_tokenizer_dir)) == {"<|end_of_text|>"}


def test_text_batches_take_the_tokenizers_own_end_of_text(llama_tokenizer_dir):
    tok = get_tokenizer(llama_tokenizer_dir)
    text = TEXT + "<|end_of_text|>" + TEXT
    train, _ = text_batches(text, tok, context_length=16, stride=16, batch_size=2,
                            train_ratio=0.9, seed=1)
    ids = train.windows.token_ids.tolist()
    assert ids.count(tok.eot_id) == 1  # the separator is one token, not its characters
    assert tok.decode(ids[:len(tok.encode(TEXT))]) == TEXT


def test_prepare_with_a_hugging_face_tokenizer_dir(llama_tokenizer_dir, tmp_path, capsys):
    tok = get_tokenizer(llama_tokenizer_dir)
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(TEXT + "<|end_of_text|>" + TEXT, encoding="utf-8")
    second.write_text("One more short document.", encoding="utf-8")
    out = tmp_path / "tokens"
    assert main(["prepare", str(first), str(second), "--out", str(out), "--val-fraction", "0",
                 "--workers", "1", "--tokenizer", str(llama_tokenizer_dir)]) == 0
    end = tok.eot_id
    expected = (tok.encode(TEXT) + [end] + tok.encode(TEXT) + [end]
                + tok.encode("One more short document.") + [end])
    assert np.fromfile(out / "train.bin", dtype="<u2").tolist() == expected
    assert json.loads((out / "train.json").read_text())["eot_id"] == end


def test_prepare_help_names_every_tokenizer_it_takes(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "BPETokenizer.save()" in help_text and "tokenizer.json" in help_text
