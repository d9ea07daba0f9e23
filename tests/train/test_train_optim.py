"""AdamW parameter groups and the warmup + cosine schedule, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from scratchllm.model import GPTConfig, GPTModel
from scratchllm.train.optim import build_optimizer, build_scheduler, lr_at, param_groups


@pytest.mark.parametrize("step,expected", [
    (0, 0.25), (1, 0.5), (3, 1.0),          # warmup: max_lr * (step + 1) / 4
    (4, 1.0),                               # cosine starts at max_lr
    (6, 0.1 + 0.45 * (1 + math.cos(math.pi / 4))),   # progress 2/8
    (8, 0.55),                              # halfway: (max + min) / 2
    (12, 0.1), (50, 0.1),                   # the end, and after it
])
def test_lr_at_hand_computed(step, expected):
    assert lr_at(step, max_lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=12) == pytest.approx(expected, abs=1e-12)


def test_lr_at_without_warmup_and_constant():
    assert lr_at(0, max_lr=2e-3, min_lr=0.0, warmup_steps=0, total_steps=10) == pytest.approx(2e-3)
    assert lr_at(5, max_lr=2e-3, min_lr=0.0, warmup_steps=0, total_steps=10) == pytest.approx(1e-3)
    # min_lr == max_lr: the book's constant rate (chapter 5)
    assert {lr_at(s, max_lr=4e-4, min_lr=4e-4, warmup_steps=0, total_steps=9) for s in range(12)} == {4e-4}


def _tiny_model() -> GPTModel:
    return GPTModel(GPTConfig(vocab_size=50, context_length=8, emb_dim=8, n_heads=2, n_layers=1))


def test_scheduler_follows_lr_at_and_resumes():
    model = _tiny_model()
    kwargs = dict(max_lr=1e-3, min_lr=1e-4, warmup_steps=3, total_steps=10)
    opt = build_optimizer(model, lr=1e-3)
    sched = build_scheduler(opt, **kwargs)
    seen = []
    for _ in range(10):
        seen.append(sched.get_last_lr()[0])
        assert all(g["lr"] == seen[-1] for g in opt.param_groups)
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, **kwargs) for s in range(10)], rel=1e-12)

    # A fresh scheduler loaded from step 4's state continues with step 4's rate.
    opt2 = build_optimizer(model, lr=1e-3)
    sched2 = build_scheduler(opt2, **kwargs)
    for _ in range(4):
        opt2.step()
        sched2.step()
    opt3 = build_optimizer(model, lr=1e-3)
    sched3 = build_scheduler(opt3, **kwargs)
    opt3.load_state_dict(opt2.state_dict())
    sched3.load_state_dict(sched2.state_dict())
    assert sched3.get_last_lr()[0] == pytest.approx(seen[4], rel=1e-12)


def test_constant_schedule_is_exactly_the_base_rate():
    opt = build_optimizer(_tiny_model(), lr=4e-4, decay_all=True)
    sched = build_scheduler(opt, max_lr=4e-4, min_lr=4e-4, warmup_steps=0, total_steps=5)
    for _ in range(7):
        assert opt.param_groups[0]["lr"] == 4e-4
        opt.step()
        sched.step()


def test_param_groups_decay_only_matrices():
    model = _tiny_model()
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.1)
    assert sorted(names[id(p)] for p in decay["params"]) == sorted([
        "tok_emb.weight", "pos_emb.weight", "trf_blocks.0.att.qkv.weight",
        "trf_blocks.0.att.out_proj.weight", "trf_blocks.0.ff.fc1.weight",
        "trf_blocks.0.ff.fc2.weight", "out_head.weight"])
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    (everything,) = param_groups(model, 0.1, decay_all=True)
    assert len(everything["params"]) == len(list(model.parameters()))


def test_tied_weights_are_one_parameter():
    model = GPTModel(GPTConfig(vocab_size=50, context_length=8, emb_dim=8, n_heads=2, n_layers=1,
                               tie_weights=True))
    decay, _ = param_groups(model, 0.1)
    assert sum(p is model.tok_emb.weight for p in decay["params"]) == 1


def test_weight_decay_shrinks_matrices_but_not_norms():
    """With zero gradients AdamW's only change is w <- w * (1 - lr * wd) on decayed weights."""
    model = _tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, lr=0.01, weight_decay=0.5)
    assert opt.defaults["fused"]  # PyTorch's fused AdamW kernel runs on the CPU too
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    params = dict(model.named_parameters())
    assert torch.allclose(params["trf_blocks.0.ff.fc1.weight"], before["trf_blocks.0.ff.fc1.weight"] * 0.995)
    assert torch.equal(params["final_norm.weight"], before["final_norm.weight"])
    assert torch.equal(params["trf_blocks.0.ff.fc1.bias"], before["trf_blocks.0.ff.fc1.bias"])
