"""The batched decode step: a row's logits are bit-for-bit those it gets alone, in any slot,
beside rows of any length (GPT-2's learned positions and Llama's RoPE), with plain weights and
with the float32 weights packed for the batch width that ``serve`` decodes on."""

from __future__ import annotations

import copy

import pytest
import torch

from scratchllm.generate import generate
from scratchllm.model.config import GPTConfig
from scratchllm.model.cpu_linear import packed_unavailable
from scratchllm.model.decode_layout import prepare_decoding
from scratchllm.model.gpt import GPTModel
from scratchllm.model.llama import LlamaConfig, LlamaModel
from scratchllm.serve.slots import BatchedDecodeCache, decode_step, new_sequence_cache, prefill

WIDTH = 8


def _models():
    torch.manual_seed(0)
    models = {"gpt2": GPTModel(GPTConfig.preset("tiny", vocab_size=500)).eval(),
              "llama": LlamaModel(LlamaConfig.preset("tiny-llama", dtype="float32")).eval(),
              "qwen3": LlamaModel(LlamaConfig.preset("tiny-qwen3", dtype="float32")).eval()}
    if packed_unavailable(torch.float32) is None:  # what ``serve`` opens: laid out for WIDTH rows
        for family in ("gpt2", "llama"):
            models[f"{family} packed"] = copy.deepcopy(models[family])
            assert prepare_decoding(models[f"{family} packed"], WIDTH) > 0
    return models


MODELS = _models()


def _decode(model, prompts, steps, slots):
    """Greedy-decode ``prompts`` together, prompt i in slot ``slots[i]`` of a WIDTH-row batch;
    return each one's tokens and per-step logits."""
    caches, last, tokens, logits = [None] * WIDTH, [None] * WIDTH, {}, {}
    with torch.inference_mode():
        for prompt, slot in zip(prompts, slots):
            caches[slot] = new_sequence_cache(model, len(prompt) + steps + 1)
            last[slot] = int(prefill(model, prompt, caches[slot]).argmax())
            tokens[slot], logits[slot] = [last[slot]], []
        for _ in range(steps):
            step = decode_step(model, last, caches)
            for slot in slots:
                logits[slot].append(step[slot].clone())
                last[slot] = int(step[slot].argmax())
                tokens[slot].append(last[slot])
    return [tokens[s] for s in slots], [logits[s] for s in slots]


@pytest.mark.parametrize("family", sorted(MODELS))
def test_row_alone_equals_row_in_a_mixed_batch(family):
    model = MODELS[family]
    g = torch.Generator().manual_seed(1)
    lengths = [6, 19, 3, 41, 9, 27, 1]
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist()
               for n in lengths]
    alone_tokens, alone_logits = _decode(model, prompts[:1], 24, [0])
    # The same prompt in slot 5, beside six others of other lengths in other slots.
    tokens, logits = _decode(model, prompts, 24, [5, 0, 1, 2, 3, 4, 7])
    assert tokens[0] == alone_tokens[0]
    assert all(torch.equal(a, b) for a, b in zip(alone_logits[0], logits[0]))
    # Every row also decodes what the library's plain (unbatched) greedy loop decodes.
    for prompt, row in zip(prompts, tokens):
        assert generate(model, prompt, len(row))[len(prompt):] == row


def test_padding_rows_are_ignored_and_cost_no_cache():
    model = MODELS["gpt2"]
    cache = new_sequence_cache(model, 8)
    with torch.inference_mode():
        prefill(model, [1, 2, 3], cache)
        batch = BatchedDecodeCache([None, cache, None])
        assert batch.length == 3
        out = decode_step(model, [None, 4, None], [None, cache, None])
    assert out.shape == (3, model.config.vocab_size) and cache.length == 4
    assert torch.isfinite(out).all()


@pytest.mark.skipif(packed_unavailable(torch.float32) is not None,
                    reason="no oneDNN prepacked linear")
def test_build_engine_lays_float32_weights_out_for_its_batch_width(tmp_path):
    from serve_support import tiny_model_dir

    from scratchllm.model.cpu_linear import PackedLinear
    from scratchllm.serve import build_engine

    engine, _, _ = build_engine(tiny_model_dir(tmp_path / "m"), device="cpu", max_batch=4)
    rows = {m.rows for m in engine.model.modules() if isinstance(m, PackedLinear)}
    assert rows == {4}
