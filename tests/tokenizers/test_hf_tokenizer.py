"""HFTokenizer: a tokenizer.json behind our contract, checked against tiktoken and transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from scratchllm.errors import MissingFileError, TokenizerError
from scratchllm.tokenizers import GPT2Tokenizer, get_tokenizer, tokenizer_from_dict
from scratchllm.tokenizers.hf import HFTokenizer

EOT = "<|endoftext|>"
# A Llama-3-like template: BOS, headers per message, optional assistant header at the end.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, shared_data) -> Path:
    """GPT-2's vocabulary as a Hugging Face tokenizer.json, plus a chat template."""
    vocab = json.loads((shared_data / "gpt2" / "encoder.json").read_text())
    merges = [tuple(line.split()) for line in
              (shared_data / "gpt2" / "vocab.bpe").read_text().splitlines()[1:] if line]
    backend = tokenizers.Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOT, "<|start|>", "<|end|>"])
    out = tmp_path_factory.mktemp("hf_tok")
    backend.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": EOT, "eos_token": {"content": "<|end|>"}, "chat_template": TEMPLATE}))
    return out


@pytest.fixture(scope="module")
def tok(gpt2_dir) -> HFTokenizer:
    return HFTokenizer.from_dir(gpt2_dir)


def test_matches_tiktoken_gpt2_on_real_text(tok, shared_data):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")[:6000]
    reference = GPT2Tokenizer()
    assert tok.encode(text) == reference.encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_refused_unless_allowed(tok):
    text = f"Hello{EOT} world"
    with pytest.raises(TokenizerError, match="allowed_special"):
        tok.encode(text)
    allowed = tok.encode(text, allowed_special={EOT})
    assert allowed == GPT2Tokenizer().encode(text, allowed_special={EOT})
    assert allowed.count(50256) == 1
    # encode_ordinary reads the string as plain text: several ordinary tokens, no id 50256.
    plain = tok.encode_ordinary(text)
    assert 50256 not in plain and plain == GPT2Tokenizer().encode_ordinary(text)
    # "all" allows the custom special tokens too; an unknown name is refused.
    ids = tok.encode("<|start|>user<|end|>", allowed_special="all")
    assert ids[0] == tok.special_tokens["<|start|>"] and ids[-1] == tok.special_tokens["<|end|>"]
    with pytest.raises(TokenizerError, match="unknown special"):
        tok.encode("x", allowed_special={"<|nope|>"})


def test_ids_and_sizes(tok):
    assert tok.vocab_size == 50259
    assert tok.eot_id == tok.special_tokens["<|end|>"] == 50258  # eos_token from the config
    assert tok.bos_id == 50256
    with pytest.raises(TokenizerError, match="outside"):
        tok.decode([50259])


def test_chat_template_matches_transformers(tok, gpt2_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(gpt2_dir / "tokenizer.json"), bos_token=EOT, eos_token="<|end|>")
    reference.chat_template = TEMPLATE
    messages = [{"role": "system", "content": "Be brief. "},
                {"role": "user", "content": "What is 2+2?"}]
    for add in (True, False):
        ours = tok.apply_chat_template(messages, add_generation_prompt=add)
        assert ours == reference.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=add)
    assert ours.startswith(EOT + "<|start|>system\nBe brief.<|end|>")
    with pytest.raises(TokenizerError, match="unknown role"):
        tok.apply_chat_template([{"role": "robot", "content": "hi"}])


def test_no_chat_template_is_a_clear_error(gpt2_dir, tmp_path):
    bare = HFTokenizer.from_file(gpt2_dir / "tokenizer.json")
    with pytest.raises(TokenizerError, match="no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "hi"}])
    # Without tokenizer_config.json, the end token falls back to <|endoftext|>.
    assert bare.eot_id == 50256


def test_to_dict_and_save_files_rebuild_the_same_tokenizer(tok, tmp_path):
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    spec = tok.save_files(tmp_path)
    copied = tokenizer_from_dict(spec, base_dir=tmp_path)
    text = "A chat <|start|>user"
    for other in (again, copied):
        assert isinstance(other, HFTokenizer) and other.eot_id == tok.eot_id
        assert other.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
        assert other.chat_template == TEMPLATE
    assert spec["tokenizer_file"] == "tokenizer.json" and (tmp_path / "tokenizer.json").is_file()


def test_get_tokenizer_accepts_dir_and_file(gpt2_dir):
    assert isinstance(get_tokenizer(gpt2_dir), HFTokenizer)
    assert isinstance(get_tokenizer(gpt2_dir / "tokenizer.json"), HFTokenizer)


def test_model_dir_keeps_a_copy_of_tokenizer_json(tok, tmp_path):
    from scratchllm.model import GPTConfig, GPTModel
    from scratchllm.weights.model_dir import load_model_dir, save_model_dir

    model = GPTModel(GPTConfig.preset("tiny", vocab_size=tok.vocab_size))
    out = save_model_dir(tmp_path / "m", model, tokenizer=tok)
    assert json.loads((out / "config.json").read_text())["tokenizer"]["tokenizer_file"] == \
        "tokenizer.json"
    _, loaded = load_model_dir(out)
    assert loaded.encode("hi<|end|>", allowed_special="all") == \
        tok.encode("hi<|end|>", allowed_special="all")


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(MissingFileError, match="tokenizer.json"):
        HFTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        HFTokenizer.from_dir(tmp_path)
