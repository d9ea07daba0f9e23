"""``use_decode_layout``: transposed weight storage for batched decoding changes no value."""

from __future__ import annotations

import pytest
import torch

from scratchllm.generate import generate, generate_batch
from scratchllm.generate.layout import use_decode_layout
from scratchllm.model import GPTConfig, GPTModel, LlamaConfig, LlamaModel
from scratchllm.weights.model_dir import load_model_dir, save_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def _gpt() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4,
                              n_layers=2, drop_rate=0.0, qkv_bias=True, tie_weights=True)).eval()


def test_same_values_same_tokens_still_tied_and_saved_whole(tmp_path):
    model, reference = _gpt(), _gpt()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_decode_layout(model) == 2 * 4 + 1  # qkv, out_proj, fc1, fc2 per block + head
    assert use_decode_layout(model) == 0  # done once
    assert model.out_head.weight.t().is_contiguous()
    assert model.out_head.weight is model.tok_emb.weight  # the tie survives
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), reference(ids), rtol=1e-5, atol=1e-5)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    assert generate_batch(model, prompts, 8) == generate_batch(reference, prompts, 8)
    assert generate(model, prompts[1], 8) == generate(reference, prompts[1], 8)
    loaded, _ = load_model_dir(save_model_dir(tmp_path / "m", model))
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_generate_batch_applies_it_and_skips_what_does_not_apply():
    model = _gpt()
    generate_batch(model, [[1, 2]], 2)  # one row: nothing to share, nothing changed
    assert not model.trf_blocks[0].att.qkv.weight.t().is_contiguous()
    generate_batch(model, [[1, 2], [3]], 2)
    assert model.trf_blocks[0].att.qkv.weight.t().is_contiguous()
    llama = LlamaModel(LlamaConfig.preset("tiny-llama", vocab_size=64, n_layers=1,
                                          dtype="bfloat16")).eval()
    assert use_decode_layout(llama) == 7 + 1  # q, k, v, o, gate, up, down + untied head
    assert llama.out_head.weight.dtype == torch.bfloat16
