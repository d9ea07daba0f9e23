"""Loading Hugging Face GPT-2 checkpoints: same logits and same greedy text as transformers."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

transformers = pytest.importorskip("transformers")

import scratchllm  # noqa: E402
from scratchllm.errors import CheckpointError  # noqa: E402
from scratchllm.generate import generate  # noqa: E402
from scratchllm.weights.hf import load_hf_dir  # noqa: E402
from scratchllm.weights.hf_gpt2 import hf_to_ours, ours_to_hf  # noqa: E402

VOCAB, CONTEXT, EMB, LAYERS, HEADS = 1000, 64, 64, 2, 4


def tiny_hf_gpt2(tied: bool, cls=None):
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=EMB, n_layer=LAYERS, n_head=HEADS,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied,
        bos_token_id=0, eos_token_id=0)
    model = (cls or transformers.GPT2LMHeadModel)(config)
    with torch.no_grad():  # random norms and biases, so any mix-up shows in the logits
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    return model.eval()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def saved(request, tmp_path_factory):
    """(hf_model, single-file dir, sharded dir)."""
    hf = tiny_hf_gpt2(request.param)
    root = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(root / "single")
    hf.save_pretrained(root / "sharded", max_shard_size="200KB")
    return hf, root / "single", root / "sharded"


def test_sharded_save_really_has_several_shards(saved):
    _, _, sharded = saved
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    assert not (sharded / "model.safetensors").exists()


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_logits_match_transformers(saved, layout):
    hf, single, sharded = saved
    model, tokenizer = scratchllm.load(single if layout == "single" else sharded)
    assert tokenizer is None and not model.training
    assert model.config.qkv_bias and model.config.tie_weights == hf.config.tie_word_embeddings
    assert (model.out_head.weight is model.tok_emb.weight) == hf.config.tie_word_embeddings
    ids = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-4


def test_greedy_generation_with_kv_cache_matches_hf_generate(saved):
    hf, single, _ = saved
    model, _ = load_hf_dir(single)
    prompt = torch.randint(1, VOCAB, (1, 7))
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                           max_new_tokens=20, min_new_tokens=20, pad_token_id=0)
    ours = generate(model, prompt, max_new_tokens=20, use_cache=True)
    assert ours.shape == (1, 27)
    assert torch.equal(ours, expected)


def test_dtype_is_kept_or_cast(saved, tmp_path):
    hf, single, _ = saved
    model, _ = load_hf_dir(single, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    hf.to(torch.float16).save_pretrained(tmp_path / "fp16")
    hf.to(torch.float32)
    half, _ = load_hf_dir(tmp_path / "fp16")  # default: the stored dtype
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    up, _ = load_hf_dir(tmp_path / "fp16", dtype=torch.float32)
    ids = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():  # fp16 rounding only: close to the fp32 reference
        assert (up(ids) - hf(ids).logits).abs().max().item() < 0.05


def test_openai_style_unprefixed_checkpoint(tmp_path):
    """GPT2Model (no LM head) stores 'wte.weight', 'h.0...'; the head is the tied embedding."""
    base = tiny_hf_gpt2(tied=True, cls=transformers.GPT2Model)
    base.save_pretrained(tmp_path)
    with safetensors.safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "wte.weight" in f.keys()
    model, _ = load_hf_dir(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        expected = base(ids).last_hidden_state @ base.wte.weight.T
        assert (model(ids) - expected).abs().max().item() <= 1e-4


def test_name_mapping_both_ways():
    assert hf_to_ours("transformer.h.1.attn.c_attn.weight") == "trf_blocks.1.att.qkv.weight"
    assert hf_to_ours("h.1.attn.c_attn.weight") == "trf_blocks.1.att.qkv.weight"
    assert hf_to_ours("transformer.h.0.mlp.c_proj.bias") == "trf_blocks.0.ff.fc2.bias"
    assert hf_to_ours("ln_f.weight") == "final_norm.weight"
    assert hf_to_ours("transformer.h.3.attn.bias") is None
    assert hf_to_ours("h.3.attn.masked_bias") is None
    for ours in ["tok_emb.weight", "pos_emb.weight", "trf_blocks.5.norm2.bias",
                 "trf_blocks.0.att.out_proj.weight", "final_norm.bias", "out_head.weight"]:
        assert hf_to_ours(ours_to_hf(ours)) == ours


@pytest.mark.parametrize("change, field", [
    ({"activation_function": "relu"}, "activation_function"),
    ({"n_inner": 100}, "n_inner"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
])
def test_unsupported_gpt2_options_are_refused(saved, tmp_path, change, field):
    _, single, _ = saved
    config = json.loads((single / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    (tmp_path / "model.safetensors").symlink_to(single / "model.safetensors")
    with pytest.raises(CheckpointError, match=field):
        load_hf_dir(tmp_path)
