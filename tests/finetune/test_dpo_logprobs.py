"""DPO's response log-probs: the head runs only at scored positions, chunked, and still equals
the book's full (2B, T, vocab) log-softmax + gather, in value and in gradient."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from scratchllm.data.preference import PreferenceDataset, preference_collate
from scratchllm.finetune.logprobs import pair_logprobs
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.lora import apply_lora


@pytest.fixture(scope="module")
def batch(shared_data, gpt2_tok):
    entries = json.loads((shared_data / "instruction" / "instruction-data-with-preference.json")
                         .read_text("utf-8"))[:6]
    collate = partial(preference_collate, pad_id=gpt2_tok.eot_id)
    return collate(list(PreferenceDataset(entries, gpt2_tok)))


def tiny_gpt(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPTConfig.preset("tiny", n_layers=2, emb_dim=32, context_length=256)).eval()


def book_logprobs(model, batch, *, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's way: full logits, log-softmax over the vocabulary, gather, masked mean."""
    out = []
    for side in ("chosen", "rejected"):
        logits = model(batch[f"{side}_inputs"]).float()
        logp = torch.log_softmax(logits, dim=-1)
        targets, mask = batch[f"{side}_targets"], batch[f"{side}_mask"]
        picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        total = picked.sum(-1)
        out.append(total / mask.sum(-1) if average else total)
    return out[0], out[1]


def grads_of(model, fn) -> list[torch.Tensor]:
    model.zero_grad()
    chosen, rejected = fn()
    (chosen.sum() - 2 * rejected.sum()).backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("average", [True, False])
def test_sliced_head_equals_the_full_log_softmax(batch, average):
    model = tiny_gpt()
    rows = []
    hook = model.out_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    ours = pair_logprobs(model, batch, average=average)
    hook.remove()
    scored = int(batch["chosen_mask"].sum() + batch["rejected_mask"].sum())
    assert sum(rows) == scored < 2 * batch["chosen_inputs"].numel()  # prompts never hit the head
    book = book_logprobs(model, batch, average=average)
    for a, b in zip(ours, book):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ours_g = grads_of(model, lambda: pair_logprobs(model, batch, average=average))
    book_g = grads_of(model, lambda: book_logprobs(model, batch, average=average))
    for a, b in zip(ours_g, book_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sliced_head_under_lora_equals_the_full_log_softmax(batch):
    model = tiny_gpt(1)
    apply_lora(model, rank=4, alpha=8, target_modules=("qkv", "fc1", "out_head"))
    for name, p in model.named_parameters():  # B starts at zero: make the adapters matter
        if name.endswith(".lora_B"):
            torch.nn.init.normal_(p, std=0.1)
    ours = pair_logprobs(model, batch)
    book = book_logprobs(model, batch, average=True)
    for a, b in zip(ours, book):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ours_g = grads_of(model, lambda: pair_logprobs(model, batch))
    book_g = grads_of(model, lambda: book_logprobs(model, batch, average=True))
    assert ours_g and all(g.abs().sum() > 0 for g in ours_g)
    for a, b in zip(ours_g, book_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_batch_with_nothing_scored_gives_zeros_and_a_backward_pass(batch):
    model = tiny_gpt()
    empty = dict(batch)
    for side in ("chosen", "rejected"):
        empty[f"{side}_targets"] = torch.full_like(batch[f"{side}_targets"], -100)
    chosen, rejected = pair_logprobs(model, empty, average=False)
    assert chosen.tolist() == [0.0] * len(chosen) and rejected.tolist() == [0.0] * len(rejected)
    (chosen.sum() + rejected.sum()).backward()
    assert all(float(p.grad.abs().sum()) == 0.0 for p in model.parameters() if p.grad is not None)
