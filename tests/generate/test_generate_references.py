"""Independent references: Hugging Face ``generate`` and the book's ``generate`` (book 5.3)."""

from __future__ import annotations

import pytest
import torch

from scratchllm.generate import generate, generate_batch
from scratchllm.model import GPTConfig, GPTModel

transformers = pytest.importorskip("transformers")

VOCAB, CONTEXT, EMB, LAYERS, HEADS = 500, 48, 32, 2, 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py: one_thread)."""


@torch.no_grad()
def _copy_from_hf(hf) -> GPTModel:
    """Our GPTModel with the weights of a GPT2LMHeadModel (HF's Conv1D weights are (in, out),
    nn.Linear's are (out, in), hence the transposes)."""
    ours = GPTModel(GPTConfig(vocab_size=VOCAB, context_length=CONTEXT, emb_dim=EMB,
                              n_heads=HEADS, n_layers=LAYERS, drop_rate=0.0, qkv_bias=True,
                              tie_weights=True)).eval()
    sd = hf.state_dict()
    ours.tok_emb.weight.copy_(sd["transformer.wte.weight"])
    ours.pos_emb.weight.copy_(sd["transformer.wpe.weight"])
    names = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_attn": "att.qkv",
             "attn.c_proj": "att.out_proj", "mlp.c_fc": "ff.fc1", "mlp.c_proj": "ff.fc2"}
    for i, block in enumerate(ours.trf_blocks):
        for theirs, mine in names.items():
            weight = sd[f"transformer.h.{i}.{theirs}.weight"]
            block.get_submodule(mine).weight.copy_(weight if theirs.startswith("ln_") else weight.T)
            block.get_submodule(mine).bias.copy_(sd[f"transformer.h.{i}.{theirs}.bias"])
    ours.final_norm.weight.copy_(sd["transformer.ln_f.weight"])
    ours.final_norm.bias.copy_(sd["transformer.ln_f.bias"])
    return ours


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(11)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=EMB, n_layer=LAYERS, n_head=HEADS,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # bigger weights: decisive logits, varied greedy continuations
        for p in hf.parameters():
            p.mul_(4.0)
    return hf, _copy_from_hf(hf)


def _hf_greedy(hf, ids: torch.Tensor, mask: torch.Tensor, new: int) -> torch.Tensor:
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, use_cache=True, pad_token_id=0)


def test_greedy_matches_transformers_generate(pair):
    hf, ours = pair
    prompt = torch.randint(0, VOCAB, (1, 7))
    expected = _hf_greedy(hf, prompt, torch.ones_like(prompt), 30)
    assert len(set(expected[0, 7:].tolist())) > 5
    assert torch.equal(generate(ours, prompt, 30), expected)
    assert torch.equal(generate(ours, prompt, 30, use_cache=False), expected)


def test_left_padded_batch_matches_transformers_generate(pair):
    hf, ours = pair
    prompts = [torch.randint(0, VOCAB, (n,)).tolist() for n in (3, 9, 6)]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    expected = _hf_greedy(hf, ids, mask, 20)[:, width:].tolist()
    assert generate_batch(ours, prompts, 20) == expected
    assert generate_batch(ours, prompts, 20, use_cache=False) == expected


def test_sampling_matches_the_books_generate_with_the_same_seed(pair):
    """The book's generate (top-k, then temperature, then torch.multinomial) draws from the
    global RNG; ours does the same when no seed is given, so the tokens must agree."""
    ch05 = pytest.importorskip("llms_from_scratch.ch05")
    _, ours = pair
    prompt = torch.randint(0, VOCAB, (1, 5))
    for temperature, top_k in [(1.0, None), (1.4, 25), (0.7, 5)]:
        torch.manual_seed(2024)
        expected = ch05.generate(ours, prompt, 40, CONTEXT, temperature=temperature,
                                 top_k=top_k)
        torch.manual_seed(2024)
        got = generate(ours, prompt, 40, temperature=temperature, top_k=top_k)
        assert torch.equal(got, expected)
    # The book's eos_id also stops before the end token.
    torch.manual_seed(5)
    free = ch05.generate(ours, prompt, 30, CONTEXT, temperature=1.0)[0, 5:].tolist()
    eos = free[10]
    torch.manual_seed(5)
    expected = ch05.generate(ours, prompt, 30, CONTEXT, temperature=1.0, eos_id=eos)
    torch.manual_seed(5)
    got = generate(ours, prompt, 30, temperature=1.0, eos_id=eos)
    assert torch.equal(got, expected) and got.shape[1] == 5 + free.index(eos)


def test_several_eos_ids_stop_where_transformers_stops(pair):
    """transformers' generate takes a list of eos ids too; it keeps the end token and pads
    after it, we drop it, so ours is theirs up to (not including) the first end token."""
    hf, ours = pair
    prompt = torch.randint(0, VOCAB, (1, 6))
    free = _hf_greedy(hf, prompt, torch.ones_like(prompt), 25)[0, 6:].tolist()
    eos = [free[12], free[5]]
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=25,
                             do_sample=False, eos_token_id=eos, pad_token_id=0)[0, 6:].tolist()
    assert theirs[-1] in eos and len(theirs) < 25
    assert generate(ours, prompt[0].tolist(), 25, eos_id=eos)[6:] == theirs[:-1]
    assert generate_batch(ours, [prompt[0].tolist()], 25, eos_id=set(eos)) == [theirs[:-1]]
