"""Our LlamaModel with weights copied through the adapter gives transformers' logits and tokens.

Tiny random Llama 3 (llama3 RoPE scaling, tied and untied, with q/k/v/o biases) and Qwen3
(explicit head_dim, QK-norm) models from ``transformers`` are the independent reference.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from scratchllm.model import LlamaModel  # noqa: E402
from scratchllm.weights.hf_llama import LLAMA_ADAPTER, QWEN3_ADAPTER  # noqa: E402

_COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=128, vocab_size=1000,
               max_position_embeddings=256, eos_token_id=None, bos_token_id=None,
               pad_token_id=0)
_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
VARIANTS = {
    "llama-untied": ("llama", dict(rope_scaling=_LLAMA3_ROPE, tie_word_embeddings=False)),
    "llama-tied": ("llama", dict(rope_scaling=_LLAMA3_ROPE, tie_word_embeddings=True,
                                 rope_theta=500_000.0)),
    "llama-bias": ("llama", dict(attention_bias=True, num_hidden_layers=3)),
    "qwen3": ("qwen3", dict(head_dim=32, tie_word_embeddings=True, rope_theta=1e6)),
}


def _randomize(model: torch.nn.Module) -> None:
    """Weights large enough that the logits are far from uniform (HF init is std 0.02)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)


def _pair(variant: str):
    model_type, overrides = VARIANTS[variant]
    config_cls = transformers.Qwen3Config if model_type == "qwen3" else transformers.LlamaConfig
    model_cls = (transformers.Qwen3ForCausalLM if model_type == "qwen3"
                 else transformers.LlamaForCausalLM)
    torch.manual_seed(0)
    hf = model_cls(config_cls(**{**_COMMON, **overrides})).eval()
    _randomize(hf)
    adapter = QWEN3_ADAPTER if model_type == "qwen3" else LLAMA_ADAPTER
    assert model_type in adapter.hf_model_types
    ours = adapter.build_model(adapter.config_from_hf(hf.config.to_dict())).eval()
    state = {}
    for name, tensor in hf.state_dict().items():
        our_name = adapter.hf_to_ours(name)
        if our_name is not None:
            state[our_name] = adapter.transform_in(name, tensor)
    ours.load_state_dict(state, strict=True)
    return hf, ours


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request):
    return _pair(request.param)


def test_logits_match_transformers(pair):
    hf, ours = pair
    ids = torch.randint(0, 1000, (2, 100))  # longer than the original 64: scaling matters
    with torch.no_grad():
        theirs, mine = hf(ids).logits, ours(ids)
    assert theirs.std() > 1.0  # a real signal, not near-uniform logits
    assert (mine - theirs).abs().max() <= 1e-4


def test_config_is_translated(pair):
    hf, ours = pair
    c, h = ours.config, hf.config
    assert (c.emb_dim, c.n_heads, c.n_kv_groups, c.head_dim, c.hidden_dim) == (
        h.hidden_size, h.num_attention_heads, h.num_key_value_heads, h.head_dim,
        h.intermediate_size)
    assert c.tie_weights == h.tie_word_embeddings
    assert c.qk_norm == (h.model_type == "qwen3")
    assert (ours.out_head.weight is ours.tok_emb.weight) == c.tie_weights


def test_left_padded_batch_matches_transformers(pair):
    hf, ours = pair
    ids = torch.randint(1, 1000, (2, 30))
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[0, :7] = 0
    ids[0, :7] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what HF's generate passes
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (mine[real] - theirs[real]).abs().max() <= 1e-4


def test_cached_decoding_matches_transformers(pair):
    hf, ours = pair
    ids = torch.randint(0, 1000, (1, 80))
    with torch.no_grad():
        theirs = hf(ids).logits
        cache = ours.new_cache()
        steps = [ours(ids[:, :60], cache=cache)]
        steps += [ours(ids[:, t: t + 1], cache=cache) for t in range(60, 80)]
    assert (torch.cat(steps, 1) - theirs).abs().max() <= 1e-4


def test_greedy_generation_matches_transformers(pair):
    from scratchllm.generate import generate
    hf, ours = pair
    prompt = torch.randint(0, 1000, (1, 50))
    with torch.no_grad():
        theirs = hf.generate(prompt, do_sample=False, max_new_tokens=20, min_new_tokens=20,
                             attention_mask=torch.ones_like(prompt))
    mine = generate(ours, prompt, max_new_tokens=20)
    assert theirs.shape == (1, 70)
    assert mine.tolist() == theirs.tolist()


def test_batched_generation_with_left_padding_matches_transformers():
    from scratchllm.generate import generate_batch
    hf, ours = _pair("qwen3")
    prompts = [torch.randint(1, 1000, (n,)).tolist() for n in (12, 5)]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=15,
                             min_new_tokens=15)
    mine = generate_batch(ours, prompts, max_new_tokens=15)
    assert mine == theirs[:, width:].tolist()


@pytest.mark.parametrize("variant", ["llama-tied", "qwen3"])
def test_save_pretrained_load_and_export_round_trip(variant, tmp_path):
    """transformers -> safetensors dir -> our loader -> our exporter -> transformers."""
    hf_io = pytest.importorskip("scratchllm.weights.hf")
    hf, ours = _pair(variant)
    hf.save_pretrained(tmp_path / "hf")
    loaded, _ = hf_io.load_hf_dir(tmp_path / "hf")
    assert isinstance(loaded, LlamaModel)
    ids = torch.randint(0, 1000, (1, 90))
    with torch.no_grad():
        expected = hf(ids).logits
        assert (loaded(ids) - expected).abs().max() <= 1e-4
        hf_io.export_hf_dir(loaded, tmp_path / "out")
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
        assert type(back) is type(hf)
        assert (back(ids).logits - expected).abs().max() <= 1e-4
