"""LlamaModel keeps GPTModel's forward contract: KV cache, left padding, errors, dtypes."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ContextLengthError, DataError
from scratchllm.model import LlamaConfig, LlamaModel


@pytest.fixture(params=["tiny-llama", "tiny-qwen3"])
def model(request) -> LlamaModel:
    torch.manual_seed(0)
    return LlamaModel(LlamaConfig.preset(request.param, n_layers=2)).eval()


def test_logits_shape_and_module_names(model):
    logits = model(torch.randint(0, 1000, (2, 11)))
    assert logits.shape == (2, 11, 1000)
    names = {n for n, _ in model.named_parameters()}
    assert {"tok_emb.weight", "trf_blocks.1.att.W_key.weight", "trf_blocks.0.ff.fc3.weight",
            "trf_blocks.0.norm2.weight", "final_norm.weight", "out_head.weight"} <= names
    assert ("trf_blocks.0.att.q_norm.weight" in names) == model.config.qk_norm
    assert not any(n.endswith(".bias") for n in names)
    assert "rope_cos" not in model.state_dict()  # recomputed, never saved


def test_cached_decoding_equals_full_forward(model):
    ids = torch.randint(0, 1000, (2, 90))  # past the original context of 64: scaling matters
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        steps = [model(ids[:, :70], cache=cache)]
        steps += [model(ids[:, t: t + 1], cache=cache) for t in range(70, 90)]
    assert cache.length == 90
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_gives_the_unpadded_logits(model):
    short, long = torch.randint(0, 1000, (1, 6)), torch.randint(0, 1000, (1, 10))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.tensor([[0] * 4 + [1] * 6, [1] * 10])
    with torch.no_grad():
        padded = model(batch, attention_mask=mask)
        torch.testing.assert_close(padded[0, 4:], model(short)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(padded[1], model(long)[0], atol=1e-5, rtol=1e-5)
        # and the next token, decoded through the cache with the mask extended by one
        cache = model.new_cache()
        model(batch, attention_mask=mask, cache=cache)
        nxt = torch.tensor([[7], [8]])
        step = model(nxt, cache=cache, attention_mask=torch.cat([mask, torch.ones(2, 1)], 1))
        alone = model(torch.cat([short, nxt[:1]], 1))[0, -1]
    torch.testing.assert_close(step[0, -1], alone, atol=1e-5, rtol=1e-5)


def test_rope_scaling_changes_long_range_logits():
    torch.manual_seed(0)
    scaled = LlamaModel(LlamaConfig.preset("tiny-llama")).eval()
    plain = LlamaModel(LlamaConfig.preset("tiny-llama", rope_scaling=None)).eval()
    plain.load_state_dict(scaled.state_dict())
    ids = torch.randint(0, 1000, (1, 40))
    with torch.no_grad():
        assert not torch.allclose(scaled(ids), plain(ids), atol=1e-4)


def test_tied_weights_share_one_tensor():
    model = LlamaModel(LlamaConfig.preset("tiny-llama", tie_weights=True))
    assert model.out_head.weight is model.tok_emb.weight
    untied = LlamaModel(LlamaConfig.preset("tiny-llama"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(model) == 1000 * 64


def test_bfloat16_parameters_with_float32_rope_tables():
    model = LlamaModel(LlamaConfig.preset("tiny-qwen3", dtype="bfloat16")).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rope_cos.dtype == torch.float32
    assert model(torch.randint(0, 1000, (1, 5))).dtype == torch.bfloat16


def test_meta_built_model_recomputes_rope_tables_after_loading():
    config = LlamaConfig.preset("tiny-llama")
    reference = LlamaModel(config).eval()
    with torch.device("meta"):
        model = LlamaModel(config)
    assert model.rope_cos.is_meta
    model.load_state_dict(reference.state_dict(), assign=True)
    ids = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids), reference(ids))


def test_bad_inputs_get_clear_errors(model):
    with pytest.raises(DataError, match=r"token ids must be in \[0, 1000\)"):
        model(torch.tensor([[5, 1000]]))
    with pytest.raises(DataError, match="2-D"):
        model(torch.tensor([1, 2]))
    with pytest.raises(ContextLengthError, match="context length of 256"):
        model(torch.zeros(1, 257, dtype=torch.long))
    with pytest.raises(DataError, match="attention_mask must have shape"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3))
    cache = model.new_cache()
    model(torch.zeros(1, 250, dtype=torch.long), cache=cache)
    with pytest.raises(ContextLengthError):
        model(torch.zeros(1, 7, dtype=torch.long), cache=cache)


def test_generate_runs_on_llama(model):
    generate = pytest.importorskip("scratchllm.generate").generate
    prompt = torch.randint(0, 1000, (1, 5))
    cached = generate(model, prompt, max_new_tokens=8)
    uncached = generate(model, prompt, max_new_tokens=8, use_cache=False)
    assert cached.shape == (1, 13) and torch.equal(cached, uncached)
