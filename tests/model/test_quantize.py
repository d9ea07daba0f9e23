"""int8 weights (``scratchllm.model.quantize``): every linear layer, the tied head too, and how
close a briefly trained model's greedy output and perplexity stay to float32's."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.generate import generate, generate_batch
from scratchllm.model import GPTConfig, GPTModel, LlamaConfig, LlamaModel
from scratchllm.model import quantize as quantize_mod
from scratchllm.model.int8_linear import Int8Linear
from scratchllm.model.quantize import bf16_note, check_quantize, quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = 32


def _int8_linears(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, Int8Linear)}


def _float_linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) is nn.Linear]


@pytest.fixture(scope="module")
def trained(shared_data) -> tuple[GPTModel, torch.Tensor]:
    """A byte-level GPT (tied head) trained briefly on tiny Shakespeare, and held-out bytes."""
    data = (shared_data / "tinyshakespeare.txt").read_bytes()
    train = torch.tensor(list(data[:100_000]), dtype=torch.long)
    held_out = torch.tensor(list(data[-4_097:]), dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=256, context_length=CONTEXT, emb_dim=64, n_heads=4,
                               n_layers=2, drop_rate=0.0, qkv_bias=True, tie_weights=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        starts = torch.randint(0, len(train) - CONTEXT - 1, (16,), generator=gen)
        x = torch.stack([train[s:s + CONTEXT] for s in starts])
        y = torch.stack([train[s + 1:s + CONTEXT + 1] for s in starts])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 3.0, "the model did not learn (byte entropy of English is ~2.3 nats)"
    return model.eval(), held_out


def _copy(model: nn.Module) -> nn.Module:
    clone = type(model)(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def _perplexity(model: nn.Module, ids: torch.Tensor) -> float:
    usable = (len(ids) - 1) // CONTEXT * CONTEXT
    x, y = ids[:usable].view(-1, CONTEXT), ids[1:usable + 1].view(-1, CONTEXT)
    with torch.inference_mode():
        return math.exp(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())


def test_every_linear_becomes_int8_and_the_tied_head_too(trained):
    model = _copy(trained[0])
    floats = _float_linears(model)
    assert "out_head" in floats and model.out_head.weight is model.tok_emb.weight
    quantize_model(model, "int8")
    int8 = _int8_linears(model)
    assert set(int8) == set(floats) and not _float_linears(model)
    head = model.out_head.dequantized_weight()  # int8 codes, one scale per output row
    assert head.shape == (256, 64)
    # the embedding keeps its float weights; the head's int8 copy rounds them
    assert model.tok_emb.weight.dtype == torch.float32
    error = (head - model.tok_emb.weight).abs()
    row_step = model.tok_emb.weight.abs().amax(dim=1, keepdim=True) / 127.5
    assert bool((error <= row_step / 2 + 1e-6).all()) and error.max() > 0
    codes = head / row_step  # whole numbers in -128..127: really int8
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.min() >= -128 - 1e-3 and codes.max() <= 127 + 1e-3
    assert getattr(model, "quantization") == "int8"


def test_int8_greedy_output_agrees_with_float32(trained):
    """Greedy continuations of a fixed prompt set, read back by both models (teacher forcing,
    so one early difference does not count twice): int8 picks float32's token at >= 90% of
    the steps, and where it does not, float32's own top two were nearly tied."""
    model, held_out = trained
    int8 = quantize_model(_copy(model), "int8")
    agree = total = 0
    gaps = []
    for start in range(0, 1600, 100):
        prompt = held_out[start:start + 8]
        ours = generate(model, prompt, 24)
        with torch.inference_mode():
            fp32_logits = model(ours[None, :-1])[0, len(prompt) - 1:]
            int8_next = int8(ours[None, :-1]).argmax(-1)[0, len(prompt) - 1:]
        fp32_next = fp32_logits.argmax(-1)
        assert torch.equal(fp32_next, ours[len(prompt):])  # greedy = its own argmax
        top2 = fp32_logits.topk(2, dim=-1).values
        gaps += (top2[:, 0] - top2[:, 1])[fp32_next != int8_next].tolist()
        agree += int((fp32_next == int8_next).sum())
        total += len(fp32_next)
    assert agree / total >= 0.9, f"int8 agreed on {agree}/{total} greedy tokens"
    assert max(gaps, default=0.0) < 0.3, gaps  # top two within 0.3 logits: near ties


def test_int8_perplexity_within_one_percent(trained):
    model, held_out = trained
    base = _perplexity(model, held_out)
    int8 = _perplexity(quantize_model(_copy(model), "int8"), held_out)
    assert base < 40  # it learned something (chance is 256)
    assert abs(int8 / base - 1) <= 0.01, (base, int8)


def test_int8_batch_rows_decode_as_each_prompt_alone(trained):
    """Serve's engine: two very different prompts (Shakespeare, and a run of rare high bytes
    whose activations look nothing like it) in one left-padded batch decode exactly the tokens
    each decodes alone. int8 rows get their own activation scales, so neither prompt's
    loudness changes the other's rounding."""
    model, held_out = trained
    int8 = quantize_model(_copy(model), "int8")
    prompts = [held_out[:20].tolist(), [255, 254, 200, 255, 3, 255]]
    together = generate_batch(int8, prompts, 16)
    alone = [generate(int8, torch.tensor(p), 16)[len(p):].tolist() for p in prompts]
    assert together == alone
    assert together[0] != together[1]  # two different continuations, not one repeated


def test_llama_int8_batched_decoding_matches_one_at_a_time():
    """Every family: a tiny Llama (untied head, no biases); generate_batch with left
    padding decodes each prompt's tokens as it does alone."""
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig.preset("tiny-llama", vocab_size=300, n_layers=2,
                                          dtype="bfloat16")).eval()
    reference = _copy(model).float()
    quantize_model(model, "int8")  # a bf16-saved model is upcast first: the kernels take fp32
    assert not _float_linears(model) and model.tok_emb.weight.dtype == torch.float32
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]
    with torch.inference_mode():
        ids = torch.tensor([prompts[0]])
        close = torch.nn.functional.cosine_similarity(
            model(ids)[0, -1], reference(ids)[0, -1], dim=0)
    assert close > 0.99
    rows = generate_batch(model, prompts, 6)
    assert rows == [generate(model, torch.tensor(p), 6)[len(p):].tolist() for p in prompts]


def test_int8_refuses_training(trained):
    model = quantize_model(_copy(trained[0]), "int8")
    model.train()
    with pytest.raises(ConfigError, match="cannot be trained"):
        model(torch.tensor([[1, 2, 3]]))
    with torch.no_grad():  # training mode without gradients (e.g. a dropout check) is fine
        model(torch.tensor([[1, 2, 3]]))


def test_bad_combinations_are_refused_before_loading(monkeypatch):
    assert check_quantize(None) is None and check_quantize("int8", "float32", "cpu") == "int8"
    with pytest.raises(ConfigError, match="unknown quantization 'int4'"):
        check_quantize("int4")
    with pytest.raises(ConfigError, match="drop --dtype"):
        check_quantize("int8", torch.bfloat16, "cpu")
    with pytest.raises(ConfigError, match="CPU or CUDA, not mps"):
        check_quantize("int8", None, "mps")
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ImportError
    with pytest.raises(ConfigError, match="needs torchao"):
        check_quantize("int8", None, "cuda")


def test_bf16_note_only_on_a_cpu_without_bf16_instructions(monkeypatch):
    flags = {"avx2": True, "avx512_vnni": True, "avx512_bf16": False, "amx": False}
    monkeypatch.setattr(quantize_mod, "cpu_flags", lambda: dict(flags))
    note = bf16_note("bfloat16", "cpu")
    assert note is not None and "avx512_bf16" in note and "--quantize int8" in note
    assert bf16_note(torch.float32, "cpu") is None and bf16_note(None, "cpu") is None
    assert bf16_note(torch.bfloat16, "cuda") is None
    flags["amx"] = True
    assert bf16_note(torch.bfloat16, "cpu") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_cpu_flags_match_the_kernel_s_cpuinfo():
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        flags = set(next(line for line in handle if line.startswith("flags")).split(":")[1].split())
    found = quantize_mod.cpu_flags()
    assert found["avx2"] == ("avx2" in flags)
    assert found["avx512_bf16"] == ("avx512_bf16" in flags)
    assert found["amx"] == ("amx_tile" in flags)
    assert found["avx512_vnni"] == bool({"avx512_vnni", "avx_vnni"} & flags)
