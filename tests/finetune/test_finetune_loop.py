"""The shared fine-tuning loop: accumulation, schedule, clipping, data order, DPO without dropout."""

from __future__ import annotations

import copy
import json
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from scratchllm.data.classification import ClassificationDataset, load_labelled_file
from scratchllm.data.instruction import InstructionDataset, instruction_collate
from scratchllm.data.preference import PreferenceDataset, preference_collate
from scratchllm.finetune.batching import EpochBatches
from scratchllm.finetune.dpo import DPOTask, dpo_terms, frozen_copy
from scratchllm.finetune.instruct import InstructTask
from scratchllm.finetune.loop import FinetuneLoop, LoopSettings
from scratchllm.finetune.runs import RunSetup
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.train.metrics import MetricsLog
from scratchllm.train.steps import batch_loss

CPU = torch.device("cpu")


def tiny_model(drop_rate: float = 0.0) -> GPTModel:
    torch.manual_seed(3)
    return GPTModel(GPTConfig.preset("tiny", n_layers=1, emb_dim=32, drop_rate=drop_rate))


def make_loop(tmp_path, name, model, tok, task, **settings) -> FinetuneLoop:
    out = tmp_path / name
    out.mkdir()
    setup = RunSetup(model, tok, CPU, "fp32", out, MetricsLog(out / "metrics.jsonl"))
    values = dict(epochs=1, batch_size=8, lr=1e-4, weight_decay=0.1, progress=False)
    return FinetuneLoop(setup, task, LoopSettings(**{**values, **settings}), {})


def instruct_task(model, tok, entries):
    data = InstructionDataset(entries, tok)
    collate = partial(instruction_collate, pad_id=tok.eot_id)
    return InstructTask(model, data, collate, {}, device=CPU, eval_batches=1,
                        save=None, plot=lambda: None)


def dpo_task(model, tok, entries):
    data = PreferenceDataset(entries, tok)
    collate = partial(preference_collate, pad_id=tok.eot_id)
    return DPOTask(model, frozen_copy(model), data, collate, {}, beta=0.5, average=True,
                   device=CPU, eval_batches=1, save=None, plot=lambda: None)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["instruct", "dpo"])
def test_accumulated_micro_batches_equal_one_big_batch(method, gpt2_tok, instruct_file,
                                                       preference_file, tmp_path):
    build = instruct_task if method == "instruct" else dpo_task
    entries = json.loads((instruct_file if method == "instruct" else preference_file).read_text())
    big_model = tiny_model()
    small_model = copy.deepcopy(big_model)
    size = 8 if method == "instruct" else 4  # DPO rows are long: keep the test quick
    big = make_loop(tmp_path, "big", big_model, gpt2_tok, build(big_model, gpt2_tok, entries),
                    batch_size=size)
    small = make_loop(tmp_path, "small", small_model, gpt2_tok,
                      build(small_model, gpt2_tok, entries), batch_size=size, micro_batch_size=2)
    big_loss, big_stats, big_tokens = big.train_step()
    small_loss, small_stats, small_tokens = small.train_step()
    assert small_loss == pytest.approx(big_loss, abs=1e-6) and small_tokens == big_tokens
    assert small_stats == pytest.approx(big_stats, abs=1e-6)
    g_big, g_small = grads(big_model), grads(small_model)
    assert g_big.keys() == g_small.keys() and g_big
    for name in g_big:
        assert torch.allclose(g_big[name], g_small[name], atol=1e-6, rtol=0), name
    if method == "instruct":
        # guard: the micro batches hold different numbers of target tokens, so averaging their
        # mean losses (every micro batch weighted alike) would give another gradient
        naive = tiny_model()
        task = instruct_task(naive, gpt2_tok, entries)
        micro = small.batches.micro_batches(0, 2)
        for ix in micro:
            (batch_loss(naive, *task.collate(ix)) / len(micro)).backward()
        g_naive = grads(naive)
        assert not all(torch.allclose(g_big[n], g_naive[n], atol=1e-6, rtol=0) for n in g_big)


def test_default_rate_is_constant_and_warmup_cosine_follow_the_formula(gpt2_tok, instruct_file,
                                                                       tmp_path):
    entries = json.loads(instruct_file.read_text())[:16]  # 4 steps of 4
    seen = {}
    for name, extra in (("constant", {}), ("cosine", dict(warmup_steps=2, min_lr=1e-5))):
        model = tiny_model()
        loop = make_loop(tmp_path, name, model, gpt2_tok, instruct_task(model, gpt2_tok, entries),
                         batch_size=4, **extra)
        seen[name] = []
        for _ in range(4):
            seen[name].append(loop.scheduler.get_last_lr()[0])
            loop.train_step()
            loop.state.step += 1
    assert seen["constant"] == [1e-4] * 4  # exactly the book's rate, no rounding
    # warmup 1e-4 * (s + 1) / 2, then cosine from 1e-4 at step 2 to 1e-5 at step 4
    assert seen["cosine"] == pytest.approx([5e-5, 1e-4, 1e-4, 1e-5 + 9e-5 * 0.5], rel=1e-12)


def test_grad_clip_bounds_the_gradient_norm(gpt2_tok, instruct_file, tmp_path):
    entries = json.loads(instruct_file.read_text())
    norms = {}
    for clip in (None, 0.05):
        model = tiny_model()
        loop = make_loop(tmp_path, f"clip-{clip}", model, gpt2_tok,
                         instruct_task(model, gpt2_tok, entries), grad_clip=clip)
        loop.train_step()
        norms[clip] = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads(model).values()])))
    assert norms[None] > 0.5  # so clipping at 0.05 really has work to do
    assert norms[0.05] == pytest.approx(0.05, rel=1e-4)


def test_epoch_order_is_the_classification_datasets_seeded_shuffle(gpt2_tok, toy_labels_file):
    data = ClassificationDataset(load_labelled_file(toy_labels_file), gpt2_tok)
    batches = EpochBatches(len(data), 6, seed=11)
    assert batches.steps_per_epoch == 40 // 6
    for epoch in (1, 2):
        expected = [b.labels.tolist() for b in data.batches(6, shuffle=True, seed=11 + epoch,
                                                            drop_last=True)]
        got = [[data.targets[i] for i in batches.indices(s)]
               for s in range((epoch - 1) * 6, epoch * 6)]
        assert got == expected
        order = batches.order(epoch)
        assert sorted(order) == list(range(40))
    assert batches.order(1) != batches.order(2)
    assert batches.micro_batches(7, 4) == [batches.indices(7)[:4], batches.indices(7)[4:]]


def test_dpo_policy_and_reference_agree_on_dropout(gpt2_tok, preference_file, tmp_path):
    """With dropout 0.2 in the config, a training step at init is exactly ln 2 with zero margins."""
    entries = json.loads(preference_file.read_text())
    policy = tiny_model(drop_rate=0.2)
    task = dpo_task(policy, gpt2_tok, entries)
    loss, stats, _ = make_loop(tmp_path, "dpo", policy, gpt2_tok, task, batch_size=4).train_step()
    assert stats == {"reward_margin": 0.0, "reward_accuracy": 0.0}
    assert loss == pytest.approx(math.log(2), abs=1e-6)

    fresh = tiny_model(drop_rate=0.2)
    reference = frozen_copy(fresh)
    batch = task.collate(list(range(4)))
    fresh.eval()  # what DPOTask does (dropout = False)
    losses, chosen, rejected = dpo_terms(fresh, reference, batch, beta=0.1)
    assert torch.equal(chosen - rejected, torch.zeros(4))
    assert torch.equal(losses, -F.logsigmoid(torch.zeros(4)))
    fresh.train()  # guard: dropout in the policy alone breaks the agreement
    losses, chosen, rejected = dpo_terms(fresh, reference, batch, beta=0.1)
    assert (chosen - rejected).abs().max() > 0
    assert not torch.equal(losses, -F.logsigmoid(torch.zeros(4)))
