"""TokenEmbedding's kept gradient buffer gives nn.Embedding's gradients and training run."""

import copy

import pytest
import torch
from torch import nn

from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.embedding import TokenEmbedding, row_grad_embeddings
from scratchllm.train import steps
from scratchllm.train.optim import build_optimizer


def test_kept_buffer_equals_dense_gradients_over_steps_and_micro_batches():
    torch.manual_seed(0)
    plain = nn.Embedding(300, 16)
    kept = TokenEmbedding(300, 16)
    kept.load_state_dict(plain.state_dict())
    chosen = row_grad_embeddings(kept)
    assert chosen == [kept] and kept.keep_row_grads
    buffers = set()
    for step in range(3):
        plain.zero_grad(set_to_none=True)
        kept.zero_grad(set_to_none=True)
        kept.reset_grad()
        buffers.add(id(kept.weight.grad))
        for micro in range(2):  # gradient accumulation: the rows add up
            ids = torch.randint(0, 40 + 100 * step, (3, 50))  # repeats within the batch
            upstream = torch.randn(3, 50, 16)
            plain(ids).backward(upstream)
            kept(ids).backward(upstream)
            if micro == 0:  # one batch: the same rows added in the same order, bit for bit
                assert torch.equal(kept.weight.grad, plain.weight.grad)
        assert kept.weight.grad.layout == torch.strided
        # a second micro batch: autograd adds whole dense gradients, we add row by row
        torch.testing.assert_close(kept.weight.grad, plain.weight.grad, rtol=1e-6, atol=1e-6)
        untouched = plain.weight.grad.abs().sum(1) == 0
        assert untouched.any() and kept.weight.grad[untouched].abs().max() == 0
    assert len(buffers) == 1  # one buffer, reused: no allocation and no full zero fill


def test_without_reset_the_embedding_is_plain():
    emb = TokenEmbedding(50, 4)
    row_grad_embeddings(emb)
    emb(torch.tensor([[1, 2]])).sum().backward()  # no reset_grad: an ordinary dense gradient
    assert emb.weight.grad.layout == torch.strided and emb._touched == []
    emb.weight.grad = None
    with torch.no_grad():
        emb.reset_grad()
        emb(torch.tensor([[3]]))
    assert emb._touched == []  # no gradient wanted, nothing recorded


def test_tied_frozen_and_untied_models():
    config = GPTConfig.preset("tiny")
    untied = GPTModel(config)
    assert row_grad_embeddings(untied) == [untied.tok_emb]  # pos_emb is a plain nn.Embedding
    tied = GPTModel(GPTConfig.preset("tiny", tie_weights=True))
    assert row_grad_embeddings(tied) == []  # the head would add a dense gradient into it
    frozen = GPTModel(config)
    frozen.tok_emb.weight.requires_grad_(False)
    assert row_grad_embeddings(frozen) == []


def test_training_steps_match_the_plain_embedding():
    """AdamW steps with the kept buffer give the weights of the usual set_to_none steps."""
    config = GPTConfig.preset("tiny", drop_rate=0.0)
    torch.manual_seed(1)
    ours = GPTModel(config)
    plain = copy.deepcopy(ours)
    plain.tok_emb.__class__ = nn.Embedding  # the stock layer, same weight
    kept = row_grad_embeddings(ours)
    opt_ours = build_optimizer(ours, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.999), decay_all=True)
    opt_plain = build_optimizer(plain, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.999), decay_all=True)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        ids = torch.randint(0, config.vocab_size, (2, config.context_length + 1), generator=gen)
        batch = [(ids[:, :-1], ids[:, 1:])]
        for model, opt, keep in ((ours, opt_ours, kept), (plain, opt_plain, [])):
            steps.zero_grad(opt, keep)
            steps.accumulate_gradients(model, batch, 1, device=torch.device("cpu"))
            opt.step()
    for (name, a), b in zip(ours.named_parameters(), plain.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("moved", [False, True])
def test_reset_grad_follows_the_weight(moved):
    emb = TokenEmbedding(20, 3)
    row_grad_embeddings(emb)
    emb.reset_grad()
    emb(torch.tensor([[4, 5]])).sum().backward()
    if moved:  # .to(dtype) converts the weight and its gradient
        emb.to(torch.float64)
        emb._grad_buffer = torch.zeros(20, 3)  # a stale buffer of the old dtype
    emb.weight.grad = None
    emb.reset_grad()
    assert emb.weight.grad.dtype == emb.weight.dtype == (torch.float64 if moved else torch.float32)
    assert emb.weight.grad.abs().sum() == 0  # rows 4 and 5 zeroed again


def test_a_copy_leaves_the_buffer_behind():
    emb = TokenEmbedding(30, 4)
    row_grad_embeddings(emb)
    emb.reset_grad()
    emb(torch.tensor([[1, 2]])).sum().backward()
    clone = copy.deepcopy(emb)
    assert clone._grad_buffer is None and clone._touched == [] and not clone.keep_row_grads
    assert torch.equal(clone.weight, emb.weight)
    assert emb._grad_buffer is emb.weight.grad and len(emb._touched) == 1  # the original keeps it
