"""Batched decoding's fast paths (issue 11): a padded batch's mask and positions built once per
batch, finished rows leaving the batch, and no per-row bookkeeping without stop conditions.

References are independent of the code under test: a decode loop written out here that
rebuilds the mask from the 1/0 padding mask every step (the model's own per-call path), and
each prompt decoded alone."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import DataError
from scratchllm.generate import api, generate, generate_batch
from scratchllm.generate.loop import decode_steps, left_pad
from scratchllm.model import GPTConfig, GPTModel, LlamaConfig, LlamaModel
from scratchllm.model.kv_cache import KVCache

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18]]


def _gpt(dtype: torch.dtype = torch.float32) -> GPTModel:
    torch.manual_seed(7)
    config = GPTConfig(vocab_size=97, context_length=48, emb_dim=32, n_heads=4, n_layers=2,
                       drop_rate=0.0, qkv_bias=True)
    return GPTModel(config).eval().to(dtype)


def _llama() -> LlamaModel:
    torch.manual_seed(7)
    return LlamaModel(LlamaConfig.preset("tiny-llama", vocab_size=97, n_layers=2,
                                         context_length=48)).eval()


def _reference_logits(model, prompts: list[list[int]], steps: int) -> list[torch.Tensor]:
    """Greedy decode of a left-padded batch, the 1/0 mask handed to the model every step."""
    ids, mask = left_pad(prompts, torch.device("cpu"))
    cache = model.new_cache(ids.shape[1] + steps)
    out = []
    with torch.inference_mode():
        logits = model(ids, cache=cache, attention_mask=mask, last_only=True)[:, -1]
        for _ in range(steps):
            out.append(logits)
            nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            logits = model(nxt, cache=cache, attention_mask=mask, last_only=True)[:, -1]
    return out


@pytest.mark.parametrize("make", [_gpt, _llama], ids=["gpt", "llama"])
def test_prepared_mask_and_positions_give_the_per_step_logits_bit_for_bit(make):
    model = make()
    seen: list[torch.Tensor] = []

    def pick(logits):
        seen.append(logits.clone())
        return logits.argmax(-1)

    ids, mask = left_pad(PROMPTS, torch.device("cpu"))
    list(decode_steps(model, ids, 12, pick, attention_mask=mask))
    reference = _reference_logits(model, PROMPTS, 12)
    assert len(seen) == len(reference) == 12
    for got, want in zip(seen, reference):
        assert torch.equal(got, want)


def test_a_bf16_batch_decodes_each_prompt_as_alone():
    """The prepared mask is additive in the activations' dtype (bf16 here)."""
    model = _gpt(torch.bfloat16)
    together = generate_batch(model, PROMPTS, 10)
    assert together == [generate(model, p, 10)[len(p):] for p in PROMPTS]


@pytest.mark.parametrize("make", [_gpt, _llama], ids=["gpt", "llama"])
def test_finished_rows_leave_the_batch_and_the_rest_decode_as_alone(make):
    model = make()
    free = generate_batch(model, PROMPTS, 14)
    eos = free[1][2]  # row 1 stops after two tokens; others may stop later or never
    widths: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[0]))
    try:
        stopped = generate_batch(model, PROMPTS, 14, eos_id=eos)
    finally:
        hook.remove()
    alone = [generate(model, p, 14, eos_id=eos)[len(p):] for p in PROMPTS]
    assert stopped == alone
    for row, cut in zip(free, stopped):
        assert cut == row[:row.index(eos)] if eos in row else cut == row
    assert widths[0] == len(PROMPTS) and widths[4] < len(PROMPTS)  # row 1 left after step 3
    assert widths == sorted(widths, reverse=True)
    # one forward per step, none after the last row ends (at its eos or at 14 tokens)
    assert len(widths) == min(14, max(len(r) for r in stopped) + 1)


def test_a_tensor_batch_with_eos_pads_rows_that_left_the_batch():
    model = _gpt()
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = generate(model, prompts, 10)
    eos = int(free[0, 4])
    out = generate(model, prompts, 10, eos_id=eos)
    for row, full in zip(out.tolist(), free.tolist()):
        new = full[3:]
        keep = new[:new.index(eos)] if eos in new else new
        assert row[3:3 + len(keep)] == keep
        assert row[3 + len(keep):] == [eos] * (len(row) - 3 - len(keep))


def test_keep_rows_moves_the_kept_rows_to_the_front_of_the_same_buffers():
    cache = KVCache(n_layers=2, max_length=6)
    keys = torch.randn(4, 2, 3, 5)
    values = torch.randn(4, 2, 3, 5)
    for layer in range(2):
        cache.update(layer, keys + layer, values - layer)
    cache.advance(3)
    before = cache._keys[0].data_ptr()
    cache.keep_rows(torch.tensor([1, 3]))
    new_k, new_v = torch.randn(2, 2, 1, 5), torch.randn(2, 2, 1, 5)
    k, v = cache.update(1, new_k, new_v)
    assert k.shape == (2, 2, 4, 5) and cache._keys[0].data_ptr() == before
    assert torch.equal(k[:, :, :3], keys[[1, 3]] + 1)
    assert torch.equal(v[:, :, :3], values[[1, 3]] - 1)
    assert torch.equal(k[:, :, 3:], new_k) and torch.equal(v[:, :, 3:], new_v)


def test_without_stop_conditions_no_row_is_tracked(monkeypatch):
    model = _gpt()
    expected = generate_batch(model, PROMPTS, 6)

    def tracker(*args, **kwargs):
        raise AssertionError("a stop tracker was made without eos ids or stop strings")

    monkeypatch.setattr(api, "StopState", tracker)
    assert generate_batch(model, PROMPTS, 6) == expected
    with pytest.raises(AssertionError, match="stop tracker"):
        generate_batch(model, PROMPTS, 6, eos_id=3)


def test_a_prepared_mask_needs_positions_and_the_right_shape():
    model = _gpt()
    ids = torch.tensor([[1, 2], [3, 4]])
    with pytest.raises(DataError, match="needs position_ids"):
        model(ids, attention_mask=torch.ones(2, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(DataError, match="must have shape"):
        model(ids, attention_mask=torch.ones(2, 1, 2, 3, dtype=torch.bool),
              position_ids=torch.tensor([[0, 1], [0, 1]]))
