"""The chunked, fused head + cross-entropy against PyTorch's plain loss over full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.llama import LlamaModel
from scratchllm.model.llama_config import LlamaConfig
from scratchllm.model.loss import chunked_cross_entropy, head_of, next_token_loss
from scratchllm.train.steps import batch_loss


def grads_of(*tensors):
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("rows", [1, 5, 16, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_cross_entropy_equals_the_plain_loss(rows, bias):
    torch.manual_seed(0)
    head = nn.Linear(12, 40, bias=bias)
    hidden = torch.randn(3, 7, 12, requires_grad=True)
    targets = torch.randint(0, 40, (3, 7))
    targets[1, 2:5] = -100  # ignored positions count neither in the loss nor in the mean

    ours = chunked_cross_entropy(hidden, head, targets, rows=rows)
    (2.5 * ours).backward()  # an upstream gradient other than 1
    mine = grads_of(hidden, *head.parameters())
    hidden.grad = None
    head.zero_grad(set_to_none=True)

    plain = F.cross_entropy(head(hidden).flatten(0, 1), targets.flatten())
    (2.5 * plain).backward()
    assert ours.item() == pytest.approx(plain.item(), abs=1e-6)
    for a, b in zip(mine, grads_of(hidden, *head.parameters())):
        assert torch.allclose(a, b, atol=1e-6)


def test_frozen_head_and_ignored_everything():
    head = nn.Linear(4, 9, bias=False).requires_grad_(False)
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    loss = chunked_cross_entropy(hidden, head, torch.randint(0, 9, (2, 3)), rows=2)
    loss.backward()
    assert hidden.grad is not None and head.weight.grad is None
    nothing = chunked_cross_entropy(hidden, head, torch.full((2, 3), -100))
    assert torch.isnan(nothing)  # as F.cross_entropy: 0 / 0 scored positions


def test_bf16_autocast_is_close_to_the_plain_loss():
    torch.manual_seed(1)
    head = nn.Linear(16, 64, bias=False)
    hidden = torch.randn(2, 6, 16)
    targets = torch.randint(0, 64, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = chunked_cross_entropy(hidden, head, targets, rows=4)  # 3 chunks
        plain = F.cross_entropy(head(hidden).flatten(0, 1).float(), targets.flatten())
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(plain.item(), rel=2e-2)
    (ours_grad,) = torch.autograd.grad(ours, head.weight)
    (plain_grad,) = torch.autograd.grad(plain, head.weight)
    assert ours_grad.dtype == torch.float32
    torch.testing.assert_close(ours_grad, plain_grad, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("family", ["gpt-tied", "gpt", "llama"])
def test_training_loss_and_gradients_equal_the_plain_loss(family):
    """batch_loss (chunked) against F.cross_entropy(model(x)) on whole models."""
    torch.manual_seed(2)
    if family == "llama":
        model = LlamaModel(LlamaConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4,
                                       n_kv_groups=2, n_layers=1, hidden_dim=48, head_dim=8))
    else:
        model = GPTModel(GPTConfig.preset("tiny", vocab_size=97, emb_dim=32, n_layers=1,
                                          context_length=16, tie_weights=family == "gpt-tied"))
    assert head_of(model) is model.out_head
    inputs, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    ours = batch_loss(model, inputs, targets)
    ours.backward()
    mine = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    plain = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
    plain.backward()
    assert ours.item() == pytest.approx(plain.item(), abs=1e-5)
    for name, param in model.named_parameters():
        assert torch.allclose(mine[name], param.grad, atol=1e-6), name


def test_models_without_return_hidden_use_the_plain_loss():
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 4)
            self.out_head = nn.Linear(4, 11)

        def forward(self, ids):
            return self.out_head(self.emb(ids))

    model = Bare()
    ids = torch.randint(0, 11, (2, 5))
    assert head_of(model) is None
    expected = F.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
    assert next_token_loss(model, ids, ids).item() == pytest.approx(expected.item())


def test_plain_loss_only_on_accelerators_and_while_the_logits_fit():
    from scratchllm.model.loss import PLAIN_LOSS_MAX_ELEMENTS, plain_loss_pays

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    # GPT-2 at 8 x 1,024 positions: 1.6 GB of fp32 logits, under the 2 GiB line
    assert plain_loss_pays(cuda, 8 * 1024, 50257)
    assert not plain_loss_pays(cpu, 8 * 1024, 50257)
    # a 128k vocabulary at 8 x 2,048 positions (8 GiB of fp32 logits) stays chunked
    assert not plain_loss_pays(cuda, 8 * 2048, 128256)
    assert plain_loss_pays(torch.device("mps"), PLAIN_LOSS_MAX_ELEMENTS // 100, 100)
    assert not plain_loss_pays(torch.device("mps"), PLAIN_LOSS_MAX_ELEMENTS // 100 + 1, 100)


def test_next_token_loss_plain_path_equals_the_chunked_one(monkeypatch):
    """The accelerator path (plain loss over full logits) gives the chunked path's loss and
    gradients; on this CPU it is forced by making ``plain_loss_pays`` say yes."""
    import scratchllm.model.loss as loss_module

    torch.manual_seed(3)
    model = GPTModel(GPTConfig(vocab_size=50, context_length=16, emb_dim=16, n_heads=2,
                               n_layers=2, drop_rate=0.0))
    ids = torch.randint(0, 50, (2, 9))
    targets = torch.randint(0, 50, (2, 9))
    targets[0, :3] = -100
    runs = []
    for plain in (False, True):
        monkeypatch.setattr(loss_module, "plain_loss_pays", lambda *a, plain=plain: plain)
        model.zero_grad(set_to_none=True)
        loss = next_token_loss(model, ids, targets)
        loss.backward()
        runs.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (chunked, chunked_grads), (plain, plain_grads) = runs
    assert plain == pytest.approx(chunked, abs=1e-6)
    for a, b in zip(chunked_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_compiled_model_on_the_plain_path_gets_the_compiled_loss(monkeypatch):
    """``--compile`` on a GPU: the model is compiled and the plain loss after its logits is
    compiled too (``_compiled_plain_loss``); same loss and gradients as the eager chunked path.
    Forced on this CPU through ``plain_loss_pays``."""
    import scratchllm.model.loss as loss_module

    torch.manual_seed(4)
    model = GPTModel(GPTConfig(vocab_size=40, context_length=8, emb_dim=16, n_heads=2,
                               n_layers=1, drop_rate=0.0))
    ids, targets = torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8))
    targets[1, :2] = -100
    eager = next_token_loss(model, ids, targets)
    eager.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    calls = []
    real = loss_module._compiled_plain_loss

    def counted():
        calls.append(1)
        return real()

    monkeypatch.setattr(loss_module, "plain_loss_pays", lambda *a: True)
    monkeypatch.setattr(loss_module, "_compiled_plain_loss", counted)
    compiled = torch.compile(model)
    loss = next_token_loss(compiled, ids, targets)
    loss.backward()
    assert calls, "the compiled model did not take the compiled loss"
    assert loss.item() == pytest.approx(eager.item(), abs=1e-5)
    for a, b in zip(expected, [p.grad for p in model.parameters()]):
        assert torch.allclose(a, b, atol=1e-5)
