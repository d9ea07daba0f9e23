"""RL scoring without a (B, R, vocab) log-softmax: chunked log-probs and entropies equal the
full computation, in value and gradient, and the head sees response positions only."""

from __future__ import annotations

import pytest
import torch

from rl_support import PROMPTS, byte_tokenizer
from scratchllm.finetune.logprobs import token_logprobs_entropy
from scratchllm.finetune.rl.policy import ValueHead
from scratchllm.finetune.rl.prompts import make_prompt
from scratchllm.finetune.rl.rollout import (encode_prompt, sample_rollout, score_tokens,
                                            step_generator)
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.lora import apply_lora

pytestmark = pytest.mark.usefixtures("one_thread")


def full_scores(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """The unchunked reference: one fp32 log-softmax over the whole (..., vocab) tensor."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked, -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("rows", [1, 5, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_and_entropy_equal_the_full_log_softmax(rows, temperature):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    logp, entropy = token_logprobs_entropy(hidden, head, targets, temperature=temperature,
                                           rows=rows)
    ref_logp, ref_entropy = full_scores(head(hidden), targets, temperature)
    torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(entropy, ref_entropy, rtol=1e-5, atol=1e-6)
    assert float(entropy.detach().min()) > 0
    assert float(entropy.detach().max()) <= float(torch.log(torch.tensor(50.0)))

    def grads(a, b):  # gradients of a mix of both outputs, w.r.t. hidden and head weight
        return torch.autograd.grad((a * 0.3).sum() - (b * 1.7).sum(), (hidden, head.weight))
    for ours, ref in zip(grads(logp, entropy), grads(ref_logp, ref_entropy)):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)

    only, none = token_logprobs_entropy(hidden, head, targets, temperature=temperature,
                                        with_entropy=False, rows=rows)
    assert none is None
    torch.testing.assert_close(only, ref_logp, rtol=1e-5, atol=1e-6)


def byte_gpt(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPTConfig.preset("tiny", vocab_size=257, n_layers=1, emb_dim=32,
                                     context_length=48)).eval()


def a_rollout(model):
    tok = byte_tokenizer()
    items = [make_prompt({"instruction": p}, "raw") for p in PROMPTS[:5]]
    ids = [encode_prompt(p, tok, "raw", 40) for p in items]
    return sample_rollout(model, tok, items, ids, max_new_tokens=6, temperature=0.8,
                          eos_ids=[256], generator=step_generator(3, 0, torch.device("cpu")))


@pytest.mark.parametrize("lora", [False, True])
def test_score_tokens_runs_the_head_on_responses_only_and_equals_full_logits(lora):
    model = byte_gpt()
    if lora:
        apply_lora(model, rank=4, alpha=8, target_modules=("qkv", "fc2", "out_head"))
        for name, p in model.named_parameters():
            if name.endswith(".lora_B"):
                torch.nn.init.normal_(p, std=0.2)
    r = a_rollout(model)
    value_head = ValueHead(32)
    with torch.no_grad():
        value_head.weight.normal_()
    rows = []
    hook = model.out_head.register_forward_hook(
        lambda m, a, o: rows.append(a[0].shape[:-1].numel()))
    ours = score_tokens(model, r, 0.8, value_head=value_head, with_entropy=True)
    hook.remove()
    assert sum(rows) == r.response_tokens.numel() < r.sequences.numel()

    start = r.prompt_width - 1
    hidden = {}
    hook = model.final_norm.register_forward_hook(lambda m, a, o: hidden.update(h=o))
    logits = model(r.sequences, attention_mask=r.attention)[:, start:-1]
    hook.remove()
    ref_logp, ref_entropy = full_scores(logits, r.response_tokens, 0.8)
    torch.testing.assert_close(ours["logprobs"], ref_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["entropy"], ref_entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["values"], value_head(hidden["h"][:, start:-1]).squeeze(-1))

    trained = [p for p in model.parameters() if p.requires_grad]
    mask = r.response_mask
    ours_g = torch.autograd.grad((ours["logprobs"] * mask).sum(), trained)
    ref_g = torch.autograd.grad((ref_logp * mask).sum(), trained)
    for a, b in zip(ours_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
