"""open_model: the one door every command uses, and what it learns about ending generation."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from scratchllm.weights.auto import LoadedModel, open_model  # noqa: E402
from scratchllm.weights.model_dir import save_model_dir  # noqa: E402

TEXT = ("Every effort moves you forward. The quick brown fox jumps over the lazy dog. "
        "Language models predict the next token, one token at a time. ") * 20
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
                 "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
                 "\n\n{% endif %}")


def byte_level_tokenizer(specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    return tok


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A Llama 3-style chat model: eos in three places, as real checkpoints have it."""
    path = tmp_path_factory.mktemp("llama")
    tok = byte_level_tokenizer(LLAMA_SPECIALS)
    ids = {t: tok.token_to_id(t) for t in LLAMA_SPECIALS}
    config = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        max_position_embeddings=64, bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=ids["<|end_of_text|>"], tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
        "chat_template": CHAT_TEMPLATE}))
    (path / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids["<|begin_of_text|>"],
        "eos_token_id": [ids["<|end_of_text|>"], ids["<|eot_id|>"]]}))
    return path, ids


def test_llama_dir_knows_every_end_id(llama_dir):
    path, ids = llama_dir
    loaded = open_model(path)
    assert isinstance(loaded, LoadedModel) and loaded.kind == "hf"
    # the tokenizer's end of text first, then generation_config's other id; no repeats
    assert loaded.eos_ids == (ids["<|end_of_text|>"], ids["<|eot_id|>"])
    assert loaded.eos_id == ids["<|end_of_text|>"]
    assert loaded.chat_template == CHAT_TEMPLATE
    model, tokenizer = loaded  # unpacks like scratchllm.load
    assert model is loaded.model and tokenizer is loaded.tokenizer


def test_chat_template_end_token_counts_without_generation_config(llama_dir, tmp_path):
    path, ids = llama_dir
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in path.iterdir():
        if item.name != "generation_config.json":
            (copy / item.name).write_bytes(item.read_bytes())
    loaded = open_model(copy)
    # config.json's eos + the template's <|eot_id|>; <|end_header_id|> is not an end
    assert loaded.eos_ids == (ids["<|end_of_text|>"], ids["<|eot_id|>"])


def test_fine_tuned_copy_keeps_the_source_end_ids(llama_dir, tmp_path):
    path, ids = llama_dir
    source = open_model(path)
    save_model_dir(tmp_path / "tuned", source.model, source.tokenizer,
                   generation={"eos_ids": list(source.eos_ids)})
    again = open_model(tmp_path / "tuned")
    assert again.kind == "scratchllm" and again.eos_ids == source.eos_ids


@pytest.fixture(scope="module")
def gpt2_vocab_merges_dir(tmp_path_factory):
    """A GPT-2 trained on other text: vocab.json + merges.txt only, as older repos ship."""
    path = tmp_path_factory.mktemp("gpt2vm")
    tok = byte_level_tokenizer(["<|endoftext|>"])
    tok.model.save(str(path))  # writes vocab.json + merges.txt
    fast = transformers.GPT2TokenizerFast(vocab_file=str(path / "vocab.json"),
                                          merges_file=str(path / "merges.txt"))
    fast.save_pretrained(path)
    (path / "tokenizer.json").unlink(missing_ok=True)
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32,
                                     n_layer=1, n_head=2,
                                     eos_token_id=tok.token_to_id("<|endoftext|>"))
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return path


def test_vocab_and_merges_give_transformers_ids(gpt2_vocab_merges_dir):
    path = gpt2_vocab_merges_dir
    assert not (path / "tokenizer.json").exists()
    loaded = open_model(path, require_tokenizer=True)
    reference = transformers.AutoTokenizer.from_pretrained(path)
    for text in ("Every effort moves you", "quick brown fox 123!", "héllo wörld 🦊 狐狸",
                 "two  spaces\nand a newline"):
        ids = loaded.tokenizer.encode(text)
        assert ids == reference(text)["input_ids"], text
        assert loaded.tokenizer.decode(ids) == text
    end = reference.convert_tokens_to_ids("<|endoftext|>")
    assert loaded.tokenizer.encode("<|endoftext|>", allowed_special="all") == [end]
    assert loaded.eos_ids == (end,)


def test_require_tokenizer_is_a_clear_error(gpt2_vocab_merges_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((gpt2_vocab_merges_dir / name).read_bytes())
    assert open_model(bare).tokenizer is None
    from scratchllm.errors import CheckpointError
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        open_model(bare, require_tokenizer=True)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_device_auto_and_a_bad_device(llama_dir, quantize):
    """Library callers may pass "auto", as the CLI does; a typo is one clear error."""
    from scratchllm.errors import ConfigError
    from scratchllm.utils.device import resolve_device

    path, _ = llama_dir
    loaded = open_model(path, device="auto", quantize=quantize, inference_only=True)
    assert next(loaded.model.parameters()).device.type == resolve_device("auto").type
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        open_model(path, device="gpu", quantize=quantize)
