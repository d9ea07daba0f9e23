"""DPO throughput changes checked against the plain computations they replace: chunked
log-probs against log_softmax + gather, cached reference log-probs against a reference model
run every step, the LoRA base against a deep copy."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch

from scratchllm.data.preference import PreferenceDataset, preference_collate
from scratchllm.finetune.dpo import DPOTask, finetune_dpo
from scratchllm.finetune.dpo_reference import (
    LoRABaseReference,
    cache_reference_logprobs,
    frozen_copy,
    reference_model,
    with_reference,
)
from scratchllm.finetune.logprobs import pair_logprobs
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.lora import LoRALinear, apply_lora, lora_layers
from scratchllm.model.loss import token_logprobs

CPU = torch.device("cpu")


def tiny_model() -> GPTModel:
    torch.manual_seed(11)
    return GPTModel(GPTConfig.preset("tiny", n_layers=1, emb_dim=32, context_length=96))


@pytest.fixture(scope="module")
def pairs(preference_file):
    return json.loads(preference_file.read_text("utf-8"))[:12]


def make_task(model, reference, tok, pairs, cached: bool) -> DPOTask:
    data = PreferenceDataset(pairs, tok)
    collate = with_reference(partial(preference_collate, pad_id=tok.eot_id))
    if cached:
        cache_reference_logprobs(model, data, collate, batch_size=5)
    return DPOTask(model, None if cached else reference, data, collate, {}, beta=0.5,
                   average=True, device=CPU, eval_batches=1, save=None, plot=lambda: None)


@pytest.mark.parametrize("rows", [1, 7, 64, None])
def test_chunked_token_logprobs_equal_log_softmax_and_gather(rows):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    hidden = torch.randn(3, 9, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 9))
    targets[0, :4] = -100
    targets[2, -1] = -100
    upstream = torch.randn(3, 9)

    ours = token_logprobs(hidden, head, targets, rows=rows)
    (ours * upstream).sum().backward()
    got = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad = head.weight.grad = head.bias.grad = None

    logp = torch.log_softmax(head(hidden), dim=-1)
    mask = targets != -100
    plain = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * mask
    (plain * upstream).sum().backward()
    assert torch.allclose(ours, plain, atol=1e-6)
    assert (ours[~mask] == 0).all()
    for mine, theirs in zip(got, (hidden.grad, head.weight.grad, head.bias.grad)):
        assert torch.allclose(mine, theirs, atol=1e-6)


def test_chunked_token_logprobs_through_a_lora_head():
    """The head is called as a module, so adapters on it are part of the computation."""
    torch.manual_seed(1)
    head = LoRALinear(torch.nn.Linear(8, 30, bias=False), rank=2)
    torch.nn.init.normal_(head.lora_B)
    hidden = torch.randn(2, 5, 8)
    targets = torch.randint(0, 30, (2, 5))
    ours = token_logprobs(hidden, head, targets, rows=3)
    plain = torch.log_softmax(head(hidden), -1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(ours, plain, atol=1e-6)
    ours.sum().backward()
    assert head.lora_B.grad is not None and head.lora_B.grad.abs().sum() > 0


def test_cached_reference_matches_a_reference_run_every_step(gpt2_tok, pairs):
    """Three AdamW steps: losses and gradients of the cached run equal the per-step run."""
    runs = []
    for cached in (False, True):
        policy = tiny_model().eval()
        task = make_task(policy, frozen_copy(policy), gpt2_tok, pairs, cached)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
        losses, grads = [], []
        for step in range(3):
            batch = task.collate([(4 * step + i) % len(pairs) for i in range(6)])
            assert ("reference_chosen" in batch) == cached
            optimizer.zero_grad()
            loss, stats = task.loss_sum(batch)
            loss.backward()
            losses.append(loss.item())
            grads.append({n: p.grad.clone() for n, p in policy.named_parameters()})
            optimizer.step()
        runs.append((losses, grads))
    (plain_losses, plain_grads), (cached_losses, cached_grads) = runs
    assert cached_losses[0] == pytest.approx(6 * math.log(2), abs=1e-5)  # ln 2 per pair at init
    assert cached_losses == pytest.approx(plain_losses, abs=1e-5)
    assert cached_losses[2] < cached_losses[0] - 1e-3  # it did train
    for plain, cached in zip(plain_grads, cached_grads):
        for name in plain:
            assert torch.allclose(plain[name], cached[name], atol=1e-5, rtol=1e-4), name


def test_cache_does_not_depend_on_batching(gpt2_tok, pairs):
    model = tiny_model()
    collate = partial(preference_collate, pad_id=gpt2_tok.eot_id)
    one, many = PreferenceDataset(pairs, gpt2_tok), PreferenceDataset(pairs, gpt2_tok)
    cache_reference_logprobs(model, one, collate, batch_size=1)
    cache_reference_logprobs(model, many, collate, batch_size=12)
    alone = torch.stack([item["reference"] for item in one.items])
    batched = torch.stack([item["reference"] for item in many.items])
    assert torch.allclose(alone, batched, atol=1e-5)
    assert model.training  # the mode it came in


def test_lora_base_reference_equals_a_deep_copy_of_the_base(gpt2_tok, pairs):
    base = tiny_model().eval()
    copied = frozen_copy(base)
    policy = apply_lora(base, rank=2, alpha=4.0, dropout=0.1)
    for layer in lora_layers(policy).values():  # as if trained: the adapters change outputs
        torch.nn.init.normal_(layer.lora_B, std=0.5)
    reference = reference_model(policy)
    assert isinstance(reference, LoRABaseReference) and not list(reference.parameters())
    batch = preference_collate(PreferenceDataset(pairs[:4], gpt2_tok), pad_id=gpt2_tok.eot_id)
    with torch.no_grad():
        from_base = pair_logprobs(reference, batch)
        from_copy = pair_logprobs(copied, batch)
        from_policy = pair_logprobs(policy, batch)
    for mine, theirs in zip(from_base, from_copy):
        assert torch.equal(mine, theirs)
    assert not torch.allclose(from_policy[0], from_copy[0])  # the adapters are back on
    assert lora_layers(policy)


def test_cached_and_uncached_runs_log_the_same_losses(dropout_model_dir, preference_file,
                                                      tmp_path):
    """End to end, with LoRA: cache (default) against the LoRA-base reference every step."""
    common = dict(epochs=1, lr=5e-3, beta=0.5, batch_size=4, eval_every=2, eval_batches=1,
                  lora={"rank": 2, "alpha": 4.0}, device="cpu", progress=False, stop_at=3)
    logs = []
    for cached in (True, False):
        out = tmp_path / str(cached)
        finetune_dpo(dropout_model_dir, preference_file, out, cache_reference=cached, **common)
        records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
        logs.append([(r["event"], r.get("loss", r.get("val_loss"))) for r in records
                     if r.get("event") in ("train", "eval")])
    assert [e for e, _ in logs[0]] == [e for e, _ in logs[1]]
    assert [v for _, v in logs[0]] == pytest.approx([v for _, v in logs[1]], abs=1e-5)
    assert logs[0][0][1] == pytest.approx(math.log(2), abs=1e-6)
