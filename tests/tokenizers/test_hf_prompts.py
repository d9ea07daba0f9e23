"""Prompt encoding: BOS exactly where transformers puts it (Llama 3 yes, GPT-2 / Qwen3 no)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from scratchllm.errors import TokenizerError
from scratchllm.tokenizers import GPT2Tokenizer, SimpleTokenizer, tokenizer_from_dict
from scratchllm.tokenizers.hf import HFTokenizer

transformers = pytest.importorskip("transformers")

BOS, EOT, EOS = "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"
CORPUS = ["The quick brown fox jumps over the lazy dog. Hello world! 你好，世界。"] * 20
TEXTS = ["Hello world", " leading space", "你好 fox", "a", ""]


def _byte_level_bpe(specials: list[str]) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    return backend


def _write(directory: Path, backend: tokenizers.Tokenizer, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory) -> Path:
    """Llama 3's layout: byte-level BPE whose post-processor (ByteLevel, then a
    TemplateProcessing) puts <|begin_of_text|> before every text; no add_bos_token."""
    backend = _byte_level_bpe([BOS, EOS, EOT])
    bos = backend.token_to_id(BOS)
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                                      special_tokens=[(BOS, bos)]),
    ])
    return _write(tmp_path_factory.mktemp("llama3") / "tok", backend, {
        "bos_token": BOS, "eos_token": EOT, "tokenizer_class": "PreTrainedTokenizerFast"})


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory) -> Path:
    """Qwen3's layout: a ByteLevel post-processor only, bos_token null."""
    backend = _byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return _write(tmp_path_factory.mktemp("qwen3") / "tok", backend, {
        "bos_token": None, "eos_token": "<|im_end|>", "tokenizer_class": "PreTrainedTokenizerFast"})


def _reference(directory: Path) -> list[list[int]]:
    """transformers' ids for TEXTS, add_special_tokens=True (the default), two ways."""
    auto = transformers.AutoTokenizer.from_pretrained(str(directory))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    out = [auto(text)["input_ids"] for text in TEXTS]
    assert out == [fast(text)["input_ids"] for text in TEXTS]
    return out


def test_llama3_prompts_start_with_bos_like_transformers(llama3_dir):
    tok = HFTokenizer.from_dir(llama3_dir)
    bos = tok.special_tokens[BOS]
    expected = _reference(llama3_dir)
    assert all(ids[0] == bos for ids in expected)
    assert [tok.encode_prompt(text) for text in TEXTS] == expected
    assert tok.bos_id == bos and tok.prompt_prefix == [bos]
    # Training text gets no BOS: documents are separated by end-of-text tokens instead.
    assert tok.encode("Hello world") == expected[0][1:]
    # A prompt that already starts with BOS (a rendered chat template) does not get two.
    chat = tok.encode_prompt(f"{BOS}Hello{EOT}", allowed_special="all")
    assert chat.count(bos) == 1 and chat[0] == bos
    assert chat == tok.encode_prompt(f"Hello{EOT}", allowed_special={EOT})
    with pytest.raises(TokenizerError, match="allowed_special"):
        tok.encode_prompt(f"{BOS}Hello")


def test_qwen3_and_gpt2_prompts_get_no_bos(qwen3_dir, llama3_dir, tmp_path):
    tok = HFTokenizer.from_dir(qwen3_dir)
    assert [tok.encode_prompt(text) for text in TEXTS] == _reference(qwen3_dir)
    assert tok.prompt_prefix == [] and tok.bos_id is None
    assert tok.encode_prompt("Hello") == tok.encode("Hello")
    # GPT-2 names <|endoftext|> as bos_token, yet transformers adds nothing.
    gpt2_like = _byte_level_bpe(["<|endoftext|>"])
    gpt2_like.post_processor = processors.ByteLevel(trim_offsets=True)
    directory = _write(tmp_path / "gpt2", gpt2_like, {"bos_token": "<|endoftext|>",
                                                      "eos_token": "<|endoftext|>"})
    hf = HFTokenizer.from_dir(directory)
    assert [hf.encode_prompt(text) for text in TEXTS] == _reference(directory)
    assert hf.prompt_prefix == [] and hf.bos_id == hf.special_tokens["<|endoftext|>"]
    for ours in (GPT2Tokenizer(), SimpleTokenizer(["a", "b"])):
        assert ours.bos_id is None and ours.prompt_prefix == []
        assert ours.encode_prompt("a b") == ours.encode("a b")


@pytest.mark.parametrize("add_bos, template", [(True, False), (False, True), (True, True)])
def test_add_bos_token_in_the_config_decides_like_transformers(llama3_dir, tmp_path, add_bos,
                                                               template):
    """An explicit add_bos_token overrides the tokenizer.json's template: transformers then
    rebuilds the post-processor from it (Llama 2 style configs). The reference passes it
    explicitly: transformers 5's AutoTokenizer no longer forwards it from the config file."""
    backend = tokenizers.Tokenizer.from_file(str(llama3_dir / "tokenizer.json"))
    if not template:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    directory = _write(tmp_path / "tok", backend, {
        "bos_token": BOS, "eos_token": EOT, "add_bos_token": add_bos,
        "tokenizer_class": "PreTrainedTokenizerFast"})
    tok = HFTokenizer.from_dir(directory)
    reference = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(directory / "tokenizer.json"), bos_token=BOS, add_bos_token=add_bos)
    expected = [reference(text)["input_ids"] for text in TEXTS]
    assert [tok.encode_prompt(text) for text in TEXTS] == expected
    assert tok.prompt_prefix == ([tok.special_tokens[BOS]] if add_bos else [])
    # The setting survives a model directory's tokenizer spec.
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.prompt_prefix == tok.prompt_prefix
