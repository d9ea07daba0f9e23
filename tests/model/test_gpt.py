"""GPTModel behaviour from book 4.6: shapes, sizes, dropout, weight tying, input checks."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ContextLengthError, DataError
from scratchllm.model import GPTConfig, GPTModel

# tiktoken ids of "Every effort moves you" and "Every day holds a" (book 4.1).
BOOK_BATCH = torch.tensor([[6109, 3626, 6100, 345], [6109, 1110, 6622, 257]])


@pytest.fixture(scope="module")
def gpt2_small() -> GPTModel:
    torch.manual_seed(123)
    return GPTModel(GPTConfig.preset("gpt2-small")).eval()


def test_book_4_6_output_shape_and_sizes(gpt2_small):
    with torch.no_grad():
        logits = gpt2_small(BOOK_BATCH)
    assert logits.shape == (2, 4, 50257)
    assert torch.isfinite(logits).all()
    assert sum(p.numel() for p in gpt2_small.parameters()) == 163_009_536
    assert gpt2_small.tok_emb.weight.shape == (50257, 768)
    assert gpt2_small.out_head.weight.shape == (50257, 768)
    without_head = 163_009_536 - gpt2_small.out_head.weight.numel()
    assert without_head == 124_412_160
    size_mb = sum(p.numel() * p.element_size() for p in gpt2_small.parameters()) / 1024**2
    assert round(size_mb, 2) == 621.83


def test_block_structure_and_names_follow_the_book():
    model = GPTModel(GPTConfig.preset("tiny"))
    names = {name for name, _ in model.named_parameters()}
    for name in ("tok_emb.weight", "pos_emb.weight", "trf_blocks.1.att.qkv.weight",
                 "trf_blocks.0.att.out_proj.bias", "trf_blocks.0.ff.fc1.weight",
                 "trf_blocks.0.norm1.weight", "trf_blocks.0.norm2.bias",
                 "final_norm.weight", "out_head.weight"):
        assert name in names
    block_params = sum(p.numel() for p in model.trf_blocks[0].parameters())
    assert block_params == 12 * 64 * 64 + 10 * 64  # 4 matrices of E^2/4E^2, biases, norms


def test_dropout_in_train_mode_changes_outputs_eval_is_deterministic():
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=200, drop_rate=0.2))
    ids = torch.randint(0, 200, (2, 12))
    model.train()
    assert not torch.allclose(model(ids), model(ids))
    model.eval()
    torch.testing.assert_close(model(ids), model(ids), rtol=0, atol=0)


def test_shortcut_dropout_runs_in_training_only():
    """Both residual branches of a block go through ``drop_shortcut`` when training (book
    4.5); in eval mode, where dropout is the identity, the block skips the call (decoding)."""
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=200, drop_rate=0.5))
    calls = []
    for block in model.trf_blocks:
        block.drop_shortcut.register_forward_hook(lambda m, i, o: calls.append(m.training))
    ids = torch.randint(0, 200, (2, 12))
    model.train()(ids)
    assert calls == [True] * (2 * len(model.trf_blocks))
    calls.clear()
    model.eval()(ids)
    assert calls == []


def test_zero_dropout_train_equals_eval():
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=200, drop_rate=0.0))
    ids = torch.randint(0, 200, (2, 12))
    torch.testing.assert_close(model.train()(ids), model.eval()(ids))


def test_causal_no_peeking_at_later_tokens():
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=200)).eval()
    ids = torch.randint(0, 200, (1, 10))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 200
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_tied_weights_share_one_tensor_and_train_together():
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=200, tie_weights=True))
    assert model.out_head.weight is model.tok_emb.weight
    model(torch.randint(0, 200, (1, 5))).sum().backward()
    assert model.tok_emb.weight.grad is not None
    # Every row gets gradient through the head, not only the 5 looked-up embedding rows.
    assert (model.tok_emb.weight.grad.abs().sum(-1) > 0).all()


def test_forward_follows_model_dtype():
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=200)).to(torch.bfloat16).eval()
    ids = torch.randint(0, 200, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    for logits in (model(ids), model(ids, attention_mask=mask)):
        assert logits.dtype == torch.bfloat16
        assert torch.isfinite(logits).all()


def test_too_many_tokens_raise_context_length_error():
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=200, context_length=8))
    with pytest.raises(ContextLengthError, match="context length of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([1, 2, 3]), "2-D"),
    (torch.tensor([[1.0, 2.0]]), "integers"),
    (torch.tensor([[1, 200]]), r"\[0, 200\)"),
    (torch.tensor([[-1, 2]]), r"\[0, 200\)"),
    (torch.zeros(1, 0, dtype=torch.long), "empty"),
])
def test_bad_token_ids_give_clear_errors(bad, message):
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=200))
    with pytest.raises(DataError, match=message):
        model(bad)


def test_wrong_attention_mask_shape():
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=200))
    with pytest.raises(DataError, match=r"\(2, 4\)"):
        model(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5))
