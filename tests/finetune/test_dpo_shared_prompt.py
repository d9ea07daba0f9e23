"""``pair_logprobs(share_prompt=True)`` runs each pair's prompt once: the same log-probs and
gradients as the stacked (2B, T) pass, for GPT (learned positions), Llama (RoPE) and LoRA,
with fewer positions through the transformer; other batches fall back to the stacked pass."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from scratchllm.data.preference import PreferenceDataset, preference_collate
from scratchllm.finetune.logprobs import pair_logprobs
from scratchllm.finetune.shared_prompt import shared_prompt_hidden
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.llama import LlamaModel
from scratchllm.model.llama_config import LlamaConfig
from scratchllm.model.lora import apply_lora


@pytest.fixture(scope="module")
def entries(shared_data):
    return json.loads((shared_data / "instruction" / "instruction-data-with-preference.json")
                      .read_text("utf-8"))[:5]


def collate(entries, tok, max_length=None):
    return partial(preference_collate, pad_id=tok.eot_id, max_length=max_length)(
        list(PreferenceDataset(entries, tok)))


def gpt(seed=0):
    torch.manual_seed(seed)
    return GPTModel(GPTConfig.preset("tiny", n_layers=2, emb_dim=32, context_length=256)).eval()


def llama(seed=0):
    torch.manual_seed(seed)
    return LlamaModel(LlamaConfig.preset("tiny-llama", vocab_size=50257, n_layers=2)).eval()


def with_lora(model):
    apply_lora(model, rank=4, alpha=8, target_modules=("qkv", "fc1", "out_head"))
    for name, p in model.named_parameters():
        if name.endswith(".lora_B"):
            torch.nn.init.normal_(p, std=0.1)
    return model


def both_ways(model, batch):
    """(shared, stacked) pairs of (log-probs, gradients) of one and the same loss."""
    out = []
    for share in (True, False):
        model.zero_grad()
        chosen, rejected = pair_logprobs(model, batch, share_prompt=share)
        (chosen.sum() - 2 * rejected.sum()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        out.append((torch.cat([chosen, rejected]).detach(), grads))
    return out


@pytest.mark.parametrize("make", [gpt, llama, lambda: with_lora(gpt(1))],
                         ids=["gpt", "llama", "gpt-lora"])
def test_prompt_once_equals_the_stacked_batch(entries, gpt2_tok, make):
    model, batch = make(), collate(entries, gpt2_tok)
    seen = []
    hook = model.tok_emb.register_forward_hook(lambda m, a, o: seen.append(a[0].numel()))
    (shared, shared_g), (stacked, stacked_g) = both_ways(model, batch)
    hook.remove()
    pairs, width = batch["chosen_inputs"].shape
    assert len(seen) == 3 and seen[2] == 2 * pairs * width   # shared: prompt + answers passes
    assert seen[0] + seen[1] < 0.9 * seen[2]                  # fewer positions through the body
    torch.testing.assert_close(shared, stacked, rtol=1e-5, atol=1e-5)
    assert len(shared_g) == len(stacked_g) and any(g.abs().sum() > 0 for g in shared_g)
    for a, b in zip(shared_g, stacked_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_shared_pass_sees_each_answer_after_its_own_prompt(entries, gpt2_tok):
    """Against each sequence scored alone, unpadded (no batch neighbours at all)."""
    model, batch = gpt(2), collate(entries, gpt2_tok)
    chosen, rejected = pair_logprobs(model, batch, average=False, share_prompt=True)
    for side, got in (("chosen", chosen), ("rejected", rejected)):
        for row, item in enumerate(PreferenceDataset(entries, gpt2_tok)):
            ids = torch.tensor(item[side]["ids"] + [gpt2_tok.eot_id])
            prompt = item[side]["prompt_len"]
            with torch.no_grad():
                logp = torch.log_softmax(model(ids[None, :-1])[0], dim=-1)
            alone = logp[torch.arange(prompt - 1, len(ids) - 1), ids[prompt:]].sum()
            torch.testing.assert_close(got[row].detach(), alone, rtol=1e-5, atol=1e-5)


def test_batches_without_the_layout_fall_back_to_the_stacked_pass(entries, gpt2_tok):
    model = gpt()
    batch = collate(entries, gpt2_tok)
    assert shared_prompt_hidden(model, batch) is not None
    cut = collate(entries, gpt2_tok, max_length=40)  # some answers cut away entirely
    assert not bool((cut["chosen_targets"] != -100).any(dim=1).all())
    assert shared_prompt_hidden(model, cut) is None
    other = dict(batch)
    other["rejected_inputs"] = batch["rejected_inputs"].clone()
    other["rejected_inputs"][0, 0] += 1  # pair 0's prompts differ
    assert shared_prompt_hidden(model, other) is None
    (shared, _), (stacked, _) = both_ways(model, cut)
    torch.testing.assert_close(shared, stacked)
