"""scratchllm.load: one entry point for model dirs, run dirs and Hugging Face dirs."""

from __future__ import annotations

import json

import pytest
import torch

import scratchllm
from scratchllm.errors import CheckpointError, MissingFileError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import GPT2Tokenizer
from scratchllm.weights.model_dir import save_model_dir
from scratchllm.weights.hf_export import export_hf_dir


@pytest.fixture
def model() -> GPTModel:
    return GPTModel(GPTConfig(vocab_size=50257, context_length=16, emb_dim=16, n_heads=2,
                              n_layers=1, qkv_bias=True, tie_weights=True)).eval()


def logits(model):
    with torch.no_grad():
        return model(torch.arange(10).reshape(1, 10))


def test_scratchllm_dir_run_dir_and_hf_dir_give_the_same_model(tmp_path, model):
    tokenizer = GPT2Tokenizer()
    save_model_dir(tmp_path / "model", model, tokenizer=tokenizer)
    save_model_dir(tmp_path / "run" / "latest", model, tokenizer=tokenizer)
    export_hf_dir(model, tmp_path / "hf", tokenizer)
    for place in ("model", "run", "hf"):
        loaded, tok = scratchllm.load(tmp_path / place)
        theirs = loaded.state_dict()
        assert all(torch.equal(theirs[k], v) for k, v in model.state_dict().items()), place
        # the same weights; an HF directory's (in, out) Conv1D weights may load in another
        # memory layout, and MKL's generic path (AMD CPUs) then rounds the sums differently
        torch.testing.assert_close(logits(loaded), logits(model), rtol=1e-5, atol=1e-5,
                                   msg=place)
        assert isinstance(tok, GPT2Tokenizer), place


def test_dtype_and_device_are_applied(tmp_path, model):
    export_hf_dir(model, tmp_path / "hf")
    loaded, _ = scratchllm.load(str(tmp_path / "hf"), device="cpu", dtype=torch.bfloat16)
    assert loaded.tok_emb.weight.dtype == torch.bfloat16
    assert loaded.out_head.weight is loaded.tok_emb.weight


def test_bad_places(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist and is not a Hub name"):
        scratchllm.load(tmp_path / "nothing_here")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(MissingFileError, match="is a file"):
        scratchllm.load(tmp_path / "file.bin")
    with pytest.raises(MissingFileError, match="no config.json"):
        scratchllm.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="neither a scratchllm config"):
        scratchllm.load(tmp_path)
