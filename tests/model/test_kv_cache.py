"""KV cache and left padding: cached and padded forwards equal the plain full forward."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ContextLengthError, DataError
from scratchllm.model import GPTConfig, GPTModel, KVCache

VOCAB = 300


@pytest.fixture
def model() -> GPTModel:
    return GPTModel(GPTConfig.preset("tiny", vocab_size=VOCAB, context_length=32)).eval()


@torch.no_grad()
@pytest.mark.parametrize("chunks", [[16], [1] * 16, [5, 1, 1, 9], [7, 9]])
def test_chunked_cache_equals_full_forward(model, chunks):
    ids = torch.randint(0, VOCAB, (2, 16))
    full = model(ids)
    cache = model.new_cache()
    pieces, start = [], 0
    for size in chunks:
        pieces.append(model(ids[:, start:start + size], cache=cache))
        start += size
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_exceeding_context_raises(model):
    cache = model.new_cache()
    model(torch.zeros(1, 30, dtype=torch.long), cache=cache)
    with pytest.raises(ContextLengthError, match="32"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    assert cache.length == 30  # the failed call stored nothing
    model(torch.zeros(1, 2, dtype=torch.long), cache=cache)  # exactly full is fine
    with pytest.raises(ContextLengthError):
        KVCache(n_layers=1, max_length=4).update(0, torch.zeros(1, 1, 5, 2), torch.zeros(1, 1, 5, 2))


@torch.no_grad()
def test_reset_cache_reuses_buffers_and_accepts_new_batch_size(model):
    cache = model.new_cache()
    model(torch.randint(0, VOCAB, (1, 8)), cache=cache)
    cache.reset()
    assert cache.length == 0
    ids = torch.randint(0, VOCAB, (3, 8))
    torch.testing.assert_close(model(ids, cache=cache), model(ids), atol=1e-5, rtol=1e-5)
    with pytest.raises(DataError, match="reset"):
        model(torch.randint(0, VOCAB, (2, 1)), cache=cache)  # batch changed mid-sequence


def _left_pad(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def test_left_padded_rows_equal_their_solo_forward(model):
    rows = [torch.randint(0, VOCAB, (n,)) for n in (9, 4, 1, 9)]
    ids, mask = _left_pad(rows)
    logits = model(ids, attention_mask=mask)
    assert torch.isfinite(logits).all()  # padded positions included: no NaN anywhere
    for i, r in enumerate(rows):
        solo = model(r[None])
        torch.testing.assert_close(logits[i, -len(r):], solo[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_left_padded_cached_decoding_equals_solo(model):
    """Prefill a padded batch, then feed one token per step with the mask extended by 1."""
    rows = [torch.randint(0, VOCAB, (n,)) for n in (7, 3)]
    ids, mask = _left_pad(rows)
    steps = torch.randint(0, VOCAB, (2, 4))
    cache = model.new_cache()
    last = [model(ids, cache=cache, attention_mask=mask)[:, -1]]
    for t in range(4):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        out = model(steps[:, t:t + 1], cache=cache, attention_mask=mask)
        assert torch.isfinite(out).all()
        last.append(out[:, -1])
    got = torch.stack(last, dim=1)  # (B, 5, V)
    for i, r in enumerate(rows):
        solo = model(torch.cat([r, steps[i]])[None])[0, len(r) - 1:]
        torch.testing.assert_close(got[i], solo, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padding_token_choice_does_not_matter(model):
    rows = [torch.randint(0, VOCAB, (n,)) for n in (6, 2)]
    a_ids, mask = _left_pad(rows, pad_id=0)
    b_ids, _ = _left_pad(rows, pad_id=VOCAB - 1)
    a, b = model(a_ids, attention_mask=mask), model(b_ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_all_ones_mask_equals_no_mask(model):
    ids = torch.randint(0, VOCAB, (2, 10))
    torch.testing.assert_close(model(ids, attention_mask=torch.ones_like(ids)), model(ids))


def test_new_cache_holds_what_is_asked_up_to_the_context_window(model):
    assert model.new_cache().max_length == 32
    assert model.new_cache(10).max_length == 10
    assert model.new_cache(10_000).max_length == 32
    cache = model.new_cache(10)
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (1, 10)), cache=cache)
        with pytest.raises(ContextLengthError, match="10 positions"):
            model(torch.randint(0, VOCAB, (1, 1)), cache=cache)


def _families():
    from scratchllm.model import LlamaConfig, LlamaModel

    torch.manual_seed(3)
    yield GPTModel(GPTConfig.preset("tiny", vocab_size=VOCAB, context_length=32)).eval()
    for preset in ("tiny-llama", "tiny-qwen3"):
        yield LlamaModel(LlamaConfig.preset(preset, n_layers=2)).eval()


@torch.no_grad()
@pytest.mark.parametrize("family", list(_families()), ids=["gpt", "llama", "qwen3"])
def test_last_only_gives_the_full_forwards_last_row(family):
    """Prefill, a cached step and a left-padded batch: (B, 1, V) logits equal to the full
    forward's last row, and the same next token."""
    vocab = family.config.vocab_size
    ids = torch.randint(0, vocab, (2, 12))
    full = family(ids)
    last = family(ids, last_only=True)
    assert last.shape == (2, 1, vocab)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
    assert torch.equal(last[:, 0].argmax(-1), full[:, -1].argmax(-1))
    cache = family.new_cache(13)
    family(ids, cache=cache, last_only=True)
    step = family(ids[:, :1], cache=cache, last_only=True)
    torch.testing.assert_close(step[:, 0], family(torch.cat([ids, ids[:, :1]], 1))[:, -1],
                               atol=1e-5, rtol=1e-5)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    padded = family(ids, attention_mask=mask, last_only=True)
    torch.testing.assert_close(padded[1, 0], family(ids[1:, 5:])[0, -1], atol=1e-5, rtol=1e-5)
