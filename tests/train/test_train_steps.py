"""One training step's pieces: gradient accumulation, loss estimates, precision choices."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.data import DataLoader

from scratchllm.data import SlidingWindowDataset
from scratchllm.errors import ConfigError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.train import steps
from scratchllm.train.batches import WindowBatches

CPU = torch.device("cpu")


def _model(drop_rate: float = 0.0) -> GPTModel:
    torch.manual_seed(1)
    return GPTModel(GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4,
                              n_layers=2, drop_rate=drop_rate))


def _batch(n: int, t: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 97, (n, t + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


@pytest.mark.parametrize("k", [2, 4])
def test_accumulating_k_micro_batches_equals_one_big_batch(k):
    x, y = _batch(8)
    big, small = _model(), _model()
    big_opt = torch.optim.AdamW(big.parameters(), lr=1e-2)
    small_opt = torch.optim.AdamW(small.parameters(), lr=1e-2)

    big_loss, big_tokens = steps.accumulate_gradients(big, [(x, y)], 1, device=CPU)
    micro = list(zip(x.chunk(k), y.chunk(k)))
    small_loss, small_tokens = steps.accumulate_gradients(small, micro, k, device=CPU)

    assert small_loss == pytest.approx(big_loss, abs=1e-6) and small_tokens == big_tokens == 8 * 16
    for (name, p), q in zip(big.named_parameters(), small.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=0), name
    before = copy.deepcopy(big.state_dict())
    big_opt.step()
    small_opt.step()
    for name, p in big.state_dict().items():
        assert torch.allclose(p - before[name], small.state_dict()[name] - before[name], atol=1e-6, rtol=0), name


def test_without_dividing_by_k_the_gradient_would_be_k_times_larger():
    """Guards the test above: it notices a missing `/ accum_steps`."""
    x, y = _batch(4)
    a, b = _model(), _model()
    steps.accumulate_gradients(a, [(x, y)], 1, device=CPU)
    steps.accumulate_gradients(b, list(zip(x.chunk(2), y.chunk(2))), 1, device=CPU)
    assert not torch.allclose(a.out_head.weight.grad, b.out_head.weight.grad, atol=1e-6)


def test_estimate_loss_matches_the_books_calc_loss_loader():
    ch05 = pytest.importorskip("llms_from_scratch.ch05")
    model = _model(drop_rate=0.1)
    ids = torch.randint(0, 97, (300,), generator=torch.Generator().manual_seed(3))
    windows = SlidingWindowDataset(ids, 16, 16)
    ours = steps.estimate_loss(model, WindowBatches(windows, 4, shuffle=False, drop_last=False)
                               .first_batches(3), device=CPU)
    assert model.training  # mode restored
    model.eval()
    book = ch05.calc_loss_loader(DataLoader(windows, batch_size=4, shuffle=False), model, "cpu", 3)
    assert ours == pytest.approx(book, rel=1e-6)
    assert 3.5 < ours < 6.5  # an untrained model is near ln(97) = 4.57
    assert math.isnan(steps.estimate_loss(model, iter([]), device=CPU))


def test_perplexity():
    assert steps.perplexity(math.log(50257)) == pytest.approx(50257)
    assert steps.perplexity(float("nan")) == float("inf") and steps.perplexity(1e4) == float("inf")


def test_precision_choices_on_cpu():
    assert steps.resolve_precision("auto", CPU) == "fp32"
    assert steps.resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ConfigError, match="fp16.*CUDA"):
        steps.resolve_precision("fp16", CPU)
    assert steps.grad_scaler_for("bf16", CPU) is None


def test_bf16_autocast_runs_matmuls_in_bf16_on_cpu():
    model = _model()
    x, y = _batch(2)
    with steps.autocast_for("bf16", CPU)():
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    fp32 = steps.estimate_loss(model, iter([(x, y)]), device=CPU)
    bf16 = steps.estimate_loss(model, iter([(x, y)]), device=CPU, autocast=steps.autocast_for("bf16", CPU))
    assert bf16 == pytest.approx(fp32, abs=0.05) and bf16 != fp32
