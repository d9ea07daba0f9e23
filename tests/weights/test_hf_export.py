"""Exporting our models in Hugging Face format: transformers loads them with identical logits."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

transformers = pytest.importorskip("transformers")

from scratchllm.cli.main import main  # noqa: E402
from scratchllm.errors import ConfigError  # noqa: E402
from scratchllm.model import GPTConfig, GPTModel  # noqa: E402
from scratchllm.tokenizers import GPT2Tokenizer  # noqa: E402
from scratchllm.weights.model_dir import save_model_dir  # noqa: E402
from scratchllm.weights.hf import load_hf_dir  # noqa: E402
from scratchllm.weights.hf_export import export_hf_dir, parse_size  # noqa: E402
from scratchllm.weights.safetensors_io import write_safetensors  # noqa: E402


def trained_tiny(tie: bool, qkv_bias: bool, vocab: int = 1000) -> GPTModel:
    """A tiny model with every weight moved off its initial value (norms and biases too), as
    training would, so a mix-up of any tensor shows in the logits."""
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=vocab, tie_weights=tie,
                                      qkv_bias=qkv_bias))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def hf_logits(directory, ids):
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return hf, hf(ids).logits


@pytest.mark.parametrize("tie, qkv_bias", [(False, False), (True, True)])
def test_transformers_loads_export_with_same_logits(tmp_path, tie, qkv_bias):
    model = trained_tiny(tie, qkv_bias)
    out = export_hf_dir(model, tmp_path / "hf")
    ids = torch.randint(0, 1000, (2, 30))
    hf, logits = hf_logits(out, ids)
    with torch.no_grad():
        assert (logits - model(ids)).abs().max().item() <= 1e-4
    assert type(hf).__name__ == "GPT2LMHeadModel"
    with safetensors.safe_open(str(out / "model.safetensors"), "pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not tie)
        if not qkv_bias:  # GPT-2 always has c_attn.bias: exported as zeros
            assert not f.get_tensor("transformer.h.0.attn.c_attn.bias").any()
    again, _ = load_hf_dir(out)  # and back: bit-identical weights
    for name, tensor in model.state_dict().items():
        if name.endswith("qkv.bias") and not qkv_bias:
            continue
        assert torch.equal(again.state_dict()[name], tensor), name


def test_cli_export_of_model_dir_with_tokenizer_and_shards(tmp_path, capsys):
    model = trained_tiny(tie=True, qkv_bias=True, vocab=50257)
    tokenizer = GPT2Tokenizer()
    save_model_dir(tmp_path / "model", model, tokenizer=tokenizer)
    code = main(["export", str(tmp_path / "model"), "--to", "hf", str(tmp_path / "hf"),
                 "--shard-size", "2MB"])
    assert code == 0 and "exported" in capsys.readouterr().out
    out = tmp_path / "hf"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 50256
    ids = torch.randint(0, 50257, (1, 12))
    _, logits = hf_logits(out, ids)
    with torch.no_grad():
        assert (logits - model(ids)).abs().max().item() <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Exported tokenizers agree, don't they?"
    assert hf_tok(text)["input_ids"] == tokenizer.encode(text)
    _, loaded_tok = load_hf_dir(out)  # GPT-2's own files come back as our tiktoken tokenizer
    assert isinstance(loaded_tok, GPT2Tokenizer)


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    code = main(["export", str(tmp_path / "missing"), "--to", "hf", str(tmp_path / "out")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--to", "hf", str(tmp_path / "o"),
                 "--shard-size", "lots"]) == 2


def test_streaming_writer_matches_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(4).to(torch.bfloat16),
               "c": torch.arange(6, dtype=torch.int64).reshape(2, 3), "e": torch.zeros(0)}
    sources = {k: (v, lambda v=v: v) for k, v in tensors.items()}
    write_safetensors(tmp_path / "x.safetensors", sources)
    loaded = safetensors.torch.load_file(str(tmp_path / "x.safetensors"))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("500 mb") == 500 * 10**6
    assert parse_size("1GiB") == 2**30
    assert parse_size(1234) == 1234
    for bad in ("", "two GB", "-1GB", 0):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_export_refuses_to_overwrite_a_non_model_dir(tmp_path):
    (tmp_path / "data.txt").write_text("precious")
    model = trained_tiny(tie=False, qkv_bias=False)
    with pytest.raises(Exception, match="not written by scratchllm"):
        export_hf_dir(model, tmp_path)
    assert (tmp_path / "data.txt").read_text() == "precious"
