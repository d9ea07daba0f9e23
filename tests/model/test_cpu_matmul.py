"""``model.cpu_matmul``: training's CPU float32 products through MKL or oneDNN give the same
values and gradients as ``torch.mm`` / ``F.linear`` (float64 as the reference), the choice
follows the CPU vendor or ``SCRATCHLLM_CPU_MATMUL``, and the training loops route their
linear layers through it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.model import cpu_matmul
from scratchllm.model.cpu_matmul import OneDNNLinear, matmul_library, onednn_linears

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not cpu_matmul._onednn_runs(),
                                 reason="this PyTorch build has no oneDNN linear")]
LIBRARIES = ("mkl", "onednn")


@pytest.fixture(params=LIBRARIES)
def library(request, monkeypatch):
    monkeypatch.setenv(cpu_matmul.ENV, request.param)
    assert matmul_library() == request.param
    return request.param


def _close(ours: torch.Tensor, exact: torch.Tensor) -> None:
    torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-5)


def test_helpers_match_float64_products(library):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 48, generator=gen), torch.randn(48, 29, generator=gen)
    row_bias, col_bias = torch.randn(29, generator=gen), torch.randn(37, 1, generator=gen)
    exact = a.double() @ b.double()
    _close(cpu_matmul.mm(a, b), exact)
    _close(cpu_matmul.mm(b.t(), a.t()), exact.t())  # transposed views, as the backward passes
    out = torch.full((37, 29), float("nan"))
    assert cpu_matmul.mm(a, b, out=out) is out
    _close(out, exact)
    _close(cpu_matmul.addmm(row_bias, a, b), exact + row_bias.double())
    _close(cpu_matmul.addmm(col_bias, a, b), exact + col_bias.double())
    target = torch.ones(37, 29)
    assert cpu_matmul.addmm_(target, a, b) is target
    _close(target, exact + 1)
    x = torch.randn(2, 5, 48, generator=gen)
    _close(cpu_matmul.linear(x, b.t(), row_bias), x.double() @ b.double() + row_bias.double())
    assert not cpu_matmul.linear(x, b.t())._is_view()  # as F.linear's (FSDP2 warns of views)
    half = a.bfloat16()  # other dtypes keep torch's own kernels
    assert torch.equal(cpu_matmul.mm(half, b.bfloat16()), torch.mm(half, b.bfloat16()))


def test_onednn_linear_gradients_match_float64(library):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 24, generator=gen)
    weight, bias = torch.randn(16, 24, generator=gen), torch.randn(16, generator=gen)
    upstream = torch.randn(3, 7, 16, generator=gen)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    OneDNNLinear.apply(*leaves).backward(upstream)
    exact = [t.double().requires_grad_() for t in (x, weight, bias)]
    F.linear(*exact).backward(upstream.double())
    for ours, reference in zip(leaves, exact):
        _close(ours.grad, reference.grad)
    frozen = weight.clone()  # a frozen base (LoRA): only the input's gradient is formed
    x_only = x.clone().requires_grad_()
    OneDNNLinear.apply(x_only, frozen, None).sum().backward()
    assert frozen.grad is None and x_only.grad is not None


def test_linear_layers_route_through_onednn_only_inside_the_context(library):
    layer = nn.Linear(12, 6)
    x = torch.randn(4, 12)
    with onednn_linears():
        trained = layer(x)
        with torch.no_grad():
            evaluated = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = layer(x)
        double = nn.Linear(12, 6).double()(x.double())
    with onednn_linears(enabled=False):
        disabled = layer(x)
    routed = type(trained.grad_fn).__name__ == "OneDNNLinearBackward"
    assert routed == (library == "onednn")
    assert type(disabled.grad_fn).__name__ != "OneDNNLinearBackward"
    assert autocast.dtype == torch.bfloat16 and double.dtype == torch.float64  # left alone
    _close(trained.detach(), F.linear(x.double(), layer.weight.double(), layer.bias.double()))
    _close(evaluated, F.linear(x.double(), layer.weight.double(), layer.bias.double()))


def test_the_choice_follows_the_vendor_and_the_environment(monkeypatch):
    monkeypatch.delenv(cpu_matmul.ENV, raising=False)
    for vendor, expected in (("AuthenticAMD", "onednn"), ("GenuineIntel", "mkl"), (None, "mkl")):
        monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda v=vendor: v)
        cpu_matmul._amd.cache_clear()
        try:
            assert matmul_library() == expected, vendor
            monkeypatch.setenv(cpu_matmul.ENV, "MKL")
            assert matmul_library() == "mkl"
            monkeypatch.setenv(cpu_matmul.ENV, "onednn")
            assert matmul_library() == "onednn"
            monkeypatch.setenv(cpu_matmul.ENV, "auto")
            assert matmul_library() == expected
        finally:
            monkeypatch.delenv(cpu_matmul.ENV, raising=False)
            cpu_matmul._amd.cache_clear()
    monkeypatch.setenv(cpu_matmul.ENV, "openblas")
    with pytest.raises(ConfigError, match="must be one of auto, onednn, mkl, got 'openblas'"):
        matmul_library()


def test_the_step_loops_run_their_steps_inside_the_context(monkeypatch):
    """``run_steps`` (fine-tuning, RL) steps inside ``onednn_linears``."""
    from scratchllm.train.run_control import run_steps

    monkeypatch.setenv(cpu_matmul.ENV, "onednn")
    layer, seen = nn.Linear(4, 2), []

    def one_step():
        seen.append(type(layer(torch.ones(1, 4)).grad_fn).__name__)

    run_steps(one_step, lambda: len(seen), end=2, total=2, save=lambda: None)
    assert seen == ["OneDNNLinearBackward"] * 2


def test_checkpointed_head_chunks_recompute_inside_the_context(library):
    """The log-prob head (DPO, PPO, GRPO) recomputes each chunk in the backward pass, outside
    the training loop's context; the recompute must route its linears as the forward did."""
    from scratchllm.model.loss import token_logprobs

    torch.manual_seed(2)
    head = nn.Linear(8, 11, bias=False)
    hidden = torch.randn(2, 5, 8)
    targets = torch.randint(0, 11, (2, 5))
    grads = []
    for context in (onednn_linears(), onednn_linears(enabled=False)):
        h = hidden.clone().requires_grad_()
        head.zero_grad()
        with context:
            token_logprobs(h, head, targets, rows=4).sum().backward()
        grads.append((h.grad, head.weight.grad.clone()))
    for ours, plain in zip(*grads):
        torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)


def test_cpu_vendor_is_the_kernel_s_vendor_id():
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo here")
    lines = [line for line in cpuinfo.read_text().splitlines() if line.startswith("vendor_id")]
    expected = lines[0].split(":", 1)[1].strip() if lines else None
    assert cpu_matmul.cpu_vendor() == expected
