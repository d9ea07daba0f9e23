"""attention_weights against transformers' own attention probabilities.

Tiny random Hugging Face GPT-2, Llama (RoPE, grouped-query attention: 4 query heads share 2
key/value heads) and Qwen3 (QK-norm) models with eager attention return every layer's
softmax weights with ``output_attentions=True``; the same weights opened through
``open_model`` must give the same matrices.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from scratchllm.errors import ConfigError  # noqa: E402
from scratchllm.model.attention_weights import attention_weights  # noqa: E402
from scratchllm.weights.auto import open_model  # noqa: E402

_LLAMA = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=96, vocab_size=300, max_position_embeddings=128,
              bos_token_id=None, eos_token_id=None, pad_token_id=0, tie_word_embeddings=False)


def _randomize(model: torch.nn.Module) -> None:
    """Larger weights than HF's init, so the attention is far from uniform."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "ln_" in name:
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.2)


def _hf(family: str):
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=300, n_positions=128, n_embd=64, n_layer=3,
                                         n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                                         attn_pdrop=0.0, bos_token_id=None,
                                         eos_token_id=None)
        model = transformers.GPT2LMHeadModel(config)
    elif family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**_LLAMA))
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**_LLAMA, head_dim=32))
    _randomize(model)
    model.config._attn_implementation = "eager"  # the path that forms the probabilities
    return model.eval()


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3"])
def test_every_layer_and_head_matches_transformers(family, tmp_path):
    hf = _hf(family)
    hf.save_pretrained(tmp_path)
    ours = open_model(tmp_path, device="cpu", dtype=torch.float32).model.eval()
    ids = torch.randint(0, 300, (17,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids[None], output_attentions=True).attentions
    assert len(expected) == 3
    for layer in range(3):
        weights = attention_weights(ours, ids.tolist(), layer)
        assert weights.shape == (4, 17, 17)
        torch.testing.assert_close(weights, expected[layer][0].float(), atol=2e-5, rtol=1e-4)
        # One head alone is that head's slice; rows sum to 1 and nothing looks ahead.
        head = attention_weights(ours, ids, layer, head=3)
        torch.testing.assert_close(head, weights[3])
        torch.testing.assert_close(head.sum(-1), torch.ones(17))
        assert torch.count_nonzero(head.triu(1)) == 0
    # Far from uniform (1/17 = 0.06 per key): a weak comparison otherwise.
    assert (weights[:, -1].max(-1).values > 0.12).all()


def test_bad_layer_head_and_ids_are_refused():
    from scratchllm.model import GPTConfig, GPTModel

    model = GPTModel(GPTConfig.preset("tiny", vocab_size=50)).eval()
    n_layers, n_heads = model.config.n_layers, model.config.n_heads
    with pytest.raises(ConfigError, match=f"layer must be in 0..{n_layers - 1}"):
        attention_weights(model, [1, 2], n_layers)
    with pytest.raises(ConfigError, match=f"head must be in 0..{n_heads - 1}"):
        attention_weights(model, [1, 2], 0, head=-1)
    with pytest.raises(ConfigError, match="non-empty"):
        attention_weights(model, [], 0)
