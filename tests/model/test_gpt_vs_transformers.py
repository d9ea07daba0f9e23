"""Independent reference: Hugging Face's GPT-2 with the same weights gives the same logits."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from scratchllm.model import GPTConfig, GPTModel  # noqa: E402

VOCAB, CONTEXT, EMB, LAYERS, HEADS = 1000, 64, 64, 2, 4


def _hf_model(tied: bool):
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=EMB, n_layer=LAYERS, n_head=HEADS,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=tied,
    )
    model = transformers.GPT2LMHeadModel(config)
    # Random LayerNorm and bias values too, so a mix-up of any of them would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    return model.eval()


@torch.no_grad()
def _copy_hf_into_ours(hf, tied: bool) -> GPTModel:
    """HF Conv1D stores (in, out) weights, nn.Linear (out, in): transpose them."""
    ours = GPTModel(GPTConfig(vocab_size=VOCAB, context_length=CONTEXT, emb_dim=EMB,
                              n_heads=HEADS, n_layers=LAYERS, drop_rate=0.0, qkv_bias=True,
                              tie_weights=tied)).eval()
    sd = hf.state_dict()
    ours.tok_emb.weight.copy_(sd["transformer.wte.weight"])
    ours.pos_emb.weight.copy_(sd["transformer.wpe.weight"])
    pairs = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_attn": "att.qkv",
             "attn.c_proj": "att.out_proj", "mlp.c_fc": "ff.fc1", "mlp.c_proj": "ff.fc2"}
    for i, block in enumerate(ours.trf_blocks):
        for theirs, mine in pairs.items():
            target = block.get_submodule(mine)
            weight = sd[f"transformer.h.{i}.{theirs}.weight"]
            target.weight.copy_(weight if theirs.startswith("ln_") else weight.T)
            target.bias.copy_(sd[f"transformer.h.{i}.{theirs}.bias"])
    ours.final_norm.weight.copy_(sd["transformer.ln_f.weight"])
    ours.final_norm.bias.copy_(sd["transformer.ln_f.bias"])
    if not tied:
        ours.out_head.weight.copy_(sd["lm_head.weight"])
    return ours


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def pair(request):
    hf = _hf_model(request.param)
    return hf, _copy_hf_into_ours(hf, request.param)


@torch.no_grad()
def test_logits_match_transformers(pair):
    hf, ours = pair
    ids = torch.randint(0, VOCAB, (3, CONTEXT))
    expected = hf(ids).logits
    got = ours(ids)
    assert got.shape == expected.shape == (3, CONTEXT, VOCAB)
    assert (got - expected).abs().max().item() <= 1e-4


@torch.no_grad()
def test_left_padded_logits_match_transformers(pair):
    hf, ours = pair
    ids = torch.randint(0, VOCAB, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :5] = 0
    mask[1, :1] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = hf(ids, attention_mask=mask, position_ids=positions).logits
    got = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-4
    assert torch.isfinite(got).all()


@pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")  # renamed in 5.x
@torch.no_grad()
def test_cached_generation_matches_transformers_cache(pair):
    """Prefill then one token at a time, both with their own KV caches."""
    hf, ours = pair
    ids = torch.randint(0, VOCAB, (2, 10))
    cache = ours.new_cache()
    ours_steps = [ours(ids[:, :6], cache=cache)[:, -1]]
    out = hf(ids[:, :6], use_cache=True)
    hf_steps, past = [out.logits[:, -1]], out.past_key_values
    for t in range(6, 10):
        ours_steps.append(ours(ids[:, t:t + 1], cache=cache)[:, -1])
        out = hf(ids[:, t:t + 1], past_key_values=past, use_cache=True)
        hf_steps.append(out.logits[:, -1])
        past = out.past_key_values
    diff = (torch.stack(ours_steps) - torch.stack(hf_steps)).abs().max().item()
    assert diff <= 1e-4
