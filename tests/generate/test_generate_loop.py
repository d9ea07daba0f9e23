"""The decoding loop: KV cache == no cache (also past the context window), batching, eos."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ConfigError, DataError
from scratchllm.generate import generate, generate_batch, stream
from scratchllm.model import GPTConfig, GPTModel

CONTEXT = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py: one_thread)."""


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(123)
    config = GPTConfig(vocab_size=300, context_length=CONTEXT, emb_dim=32, n_heads=4,
                       n_layers=2, drop_rate=0.0)
    return GPTModel(config).eval()


def _prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(0, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _book_greedy(model: GPTModel, ids: list[int], new: int) -> list[int]:
    """The book's generate_text_simple, written out: argmax over the last C tokens."""
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(new):
            logits = model(seq[:, -CONTEXT:])[:, -1]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq[0].tolist()


@pytest.mark.parametrize("prompt_len, new", [
    (5, 30),  # (a) short prompt: prefill, then one token per step
    (CONTEXT - 5, 20),  # (b) crosses the context limit mid-way
    (CONTEXT + 7, 10),  # (c) prompt longer than the context
])
def test_cached_greedy_equals_uncached_and_the_books_loop(model, prompt_len, new):
    prompt = _prompt(prompt_len)
    cached = generate(model, prompt, new, use_cache=True)
    uncached = generate(model, prompt, new, use_cache=False)
    assert cached == uncached == _book_greedy(model, prompt, new)
    assert len(cached) == prompt_len + new and cached[:prompt_len] == prompt
    assert len(set(cached[prompt_len:])) > 3  # a real sequence, not one token repeated


def test_cache_prefills_once_then_feeds_one_token_until_the_window_is_full(model):
    widths = []
    hook = model.register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[1]))
    try:
        generate(model, _prompt(CONTEXT - 3), 6)
    finally:
        hook.remove()
    # A 29-token prefill, then one token at a time until the cache holds all 32 positions;
    # after that every step is a fresh forward over the last 32 tokens.
    assert widths == [CONTEXT - 3, 1, 1, 1, CONTEXT, CONTEXT]


@pytest.mark.parametrize("prompt_len, new, size", [
    (5, 7, 12),  # prompt + new tokens, not the 32-position window
    (CONTEXT - 5, 20, CONTEXT),  # crosses the window: capped at the context length
])
def test_cache_holds_prompt_plus_new_tokens_not_the_whole_window(model, monkeypatch,
                                                                 prompt_len, new, size):
    caches = []
    make = model.new_cache

    def spy(*args, **kwargs):
        caches.append(make(*args, **kwargs))
        return caches[-1]

    monkeypatch.setattr(model, "new_cache", spy)
    prompt = _prompt(prompt_len)
    out = generate(model, prompt, new)
    monkeypatch.undo()
    assert out == _book_greedy(model, prompt, new)
    (cache,) = caches
    assert cache.max_length == size
    assert all(k.shape[2] == size for k in cache._keys)  # (B, H, positions, D) buffers


def test_prefill_asks_for_the_last_row_of_logits_only(model):
    shapes = []
    hook = model.out_head.register_forward_hook(lambda m, a, out: shapes.append(out.shape))
    try:
        generate_batch(model, [_prompt(9), _prompt(4)], 3)
        generate(model, _prompt(CONTEXT + 2), 2, use_cache=False)
    finally:
        hook.remove()
    assert shapes == [(2, 1, 300)] * 3 + [(1, 1, 300)] * 2


def test_return_types_follow_the_input(model):
    prompt = _prompt(6)
    as_list = generate(model, prompt, 4)
    flat = generate(model, torch.tensor(prompt), 4)
    batched = generate(model, torch.tensor([prompt, prompt]), 4)
    assert isinstance(as_list, list) and len(as_list) == 10
    assert flat.shape == (10,) and flat.tolist() == as_list
    assert batched.shape == (2, 10) and batched[1].tolist() == as_list
    assert not flat.is_inference() and not flat.requires_grad
    assert generate(model, prompt, 0) == prompt
    assert generate(model, tuple(prompt), 4) == as_list


def test_low_precision_model_samples_valid_tokens(model):
    half = GPTModel(model.config).to(torch.bfloat16).eval()
    half.load_state_dict(model.state_dict())
    out = generate(half, _prompt(4), 10, temperature=1.0, top_p=0.9, seed=0)
    assert out == generate(half, _prompt(4), 10, temperature=1.0, top_p=0.9, seed=0)
    assert all(0 <= t < 300 for t in out)


@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_of_different_lengths_equals_each_prompt_alone(model, use_cache):
    prompts = [_prompt(3, 1), _prompt(11, 2), _prompt(1, 3), _prompt(CONTEXT - 4, 4)]
    new = 12  # the longest prompt crosses the context limit
    batch = generate_batch(model, prompts, new, use_cache=use_cache)
    alone = [generate(model, p, new, use_cache=use_cache)[len(p):] for p in prompts]
    assert batch == alone
    assert all(len(row) == new for row in batch)


def test_eos_stops_early_and_is_not_returned(model):
    prompt = _prompt(5)
    full = generate(model, prompt, 20)
    new = full[5:]
    eos = new[7]
    first = new.index(eos)  # the first time the model produces that token
    assert generate(model, prompt, 20, eos_id=eos) == prompt + new[:first]
    assert list(stream(model, prompt, 20, eos_id=eos)) == new[:first]


def test_any_of_several_eos_ids_stops(model):
    """Chat models end a turn with one of several tokens; each one stops, none is returned,
    and a single int keeps working."""
    prompt = _prompt(5)
    new = generate(model, prompt, 20)[5:]
    late, early = new[9], new[4]
    first = min(new.index(late), new.index(early))
    for eos in ({late, early}, [late, early], (early, late), frozenset({late, early})):
        assert generate(model, prompt, 20, eos_id=eos) == prompt + new[:first]
        assert list(stream(model, prompt, 20, eos_id=eos)) == new[:first]
        assert generate_batch(model, [prompt], 20, eos_id=eos) == [new[:first]]
    assert generate(model, prompt, 20, eos_id=[late]) == prompt + new[:new.index(late)]
    unused = next(t for t in range(300) if t not in new)
    assert generate(model, prompt, 20, eos_id=[unused]) == prompt + new
    assert generate(model, prompt, 20, eos_id=[]) == prompt + new  # an empty set stops nothing
    # A tensor batch pads finished rows with the FIRST id given.
    other = _prompt(5, seed=9)
    out = generate(model, torch.tensor([prompt, other]), 20, eos_id=[unused, early])
    assert out[0, 5:].tolist() == new[:first] + [unused] * (out.shape[1] - 5 - first)


@pytest.mark.parametrize("bad", ["2", [1, "2"], [True], [-1], 1.5, b"\x01"])
def test_bad_eos_ids_are_refused(model, bad):
    with pytest.raises(ConfigError, match="eos_id"):
        generate(model, [1, 2], 3, eos_id=bad)


def test_eos_in_a_batch_stops_each_row(model):
    prompts = [_prompt(4, 5), _prompt(9, 6)]
    free = generate_batch(model, prompts, 15)
    eos = free[0][3]
    got = generate_batch(model, prompts, 15, eos_id=eos)
    for row, stopped in zip(free, got):
        cut = row.index(eos) if eos in row else len(row)
        assert stopped == row[:cut]
    # A 2-D tensor pads finished rows with eos up to the longest row.
    same = torch.tensor([prompts[0][:4], prompts[1][:4]])
    out = generate(model, same, 15, eos_id=eos)
    rows = [generate(model, r, 15, eos_id=eos) for r in same.tolist()]
    width = max(len(r) for r in rows)
    assert out.shape == (2, width)
    for tensor_row, row in zip(out.tolist(), rows):
        assert tensor_row == row + [eos] * (width - len(row))


def test_seeded_sampling_is_reproducible(model):
    prompt = _prompt(4)
    kwargs = dict(temperature=1.5, top_k=50, top_p=0.95, min_p=0.01)
    first = generate(model, prompt, 25, seed=1, **kwargs)
    assert generate(model, prompt, 25, seed=1, **kwargs) == first
    assert generate(model, prompt, 25, seed=2, **kwargs) != first
    assert generate(model, prompt, 25, seed=1, use_cache=False, **kwargs) == first
    gen = torch.Generator().manual_seed(1)
    assert generate(model, prompt, 25, generator=gen, **kwargs) == first
    assert list(stream(model, prompt, 25, seed=1, **kwargs)) == first[4:]
    # A seed leaves the global random state alone.
    state = torch.get_rng_state()
    generate(model, prompt, 5, temperature=1.0, seed=3)
    assert torch.equal(torch.get_rng_state(), state)


def test_model_mode_is_restored_and_nothing_is_tracked(model):
    model.train()
    try:
        generate(model, _prompt(3), 3)
        assert model.training
        it = stream(model, _prompt(3), 3)
        next(it)
        assert not model.training and torch.is_grad_enabled()  # no inference mode leaked
        it.close()
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize("kwargs, error", [
    (dict(temperature=-1.0), ConfigError),
    (dict(top_k=0), ConfigError),
    (dict(top_p=0.0), ConfigError),
    (dict(min_p=2.0), ConfigError),
    (dict(max_new_tokens=-1), ConfigError),
    (dict(eos_id="x"), ConfigError),
    (dict(seed=1, generator=torch.Generator()), ConfigError),
    (dict(stop_strings=["\n"]), ConfigError),  # no tokenizer to decode with
    (dict(token_ids=[]), DataError),
    (dict(token_ids=["a", "b"]), DataError),
    (dict(token_ids=torch.tensor([[0.5, 1.0]])), DataError),
    (dict(token_ids=[1, 10_000]), DataError),  # outside the vocabulary
])
def test_bad_arguments_raise_clear_value_errors(model, kwargs, error):
    args = dict(token_ids=[1, 2, 3], max_new_tokens=3) | kwargs
    with pytest.raises(error) as err:
        generate(model, **args)
    assert isinstance(err.value, ValueError)
    with pytest.raises(ValueError):  # stream checks at the call, before the first token
        stream(model, **args)


def test_batch_rejects_bad_prompts(model):
    with pytest.raises(DataError, match="prompts"):
        generate_batch(model, [], 3)
    with pytest.raises(DataError, match=r"prompts\[1\]"):
        generate_batch(model, [[1, 2], []], 3)
    with pytest.raises(DataError, match="generate_batch"):
        stream(model, torch.tensor([[1, 2], [3, 4]]), 3)
