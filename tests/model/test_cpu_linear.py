"""bf16 linear layers prepacked for oneDNN (``scratchllm.model.cpu_linear``): the same numbers
as PyTorch's plain bf16 ``F.linear``, the same greedy tokens, every family, and a model that
still saves normal weights, refuses training, and falls back where the ops or the CPU's bf16
instructions are missing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.generate import generate, generate_batch
from scratchllm.model import GPTConfig, GPTModel, LlamaConfig, LlamaModel
from scratchllm.model import cpu_linear
from scratchllm.model import quantize as quantize_mod
from scratchllm.model.cpu_linear import PackedLinear, describe_linears, pack_linears
from scratchllm.model.quantize import bf16_note

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(cpu_linear._ops_unavailable(torch.bfloat16) is not None,
                                 reason=f"{cpu_linear._ops_unavailable(torch.bfloat16)}")]

VOCAB = 300
PROMPT = torch.tensor([[5, 17, 42, 7, 99, 3, 250, 12]])
REAL_CHECK = cpu_linear._cpu_unavailable  # the CPU flags (the ops are checked after them)


@pytest.fixture(autouse=True)
def ops_usable(monkeypatch):
    """Pack wherever the ops run, even on a test machine whose CPU lacks bf16 instructions
    (oneDNN then computes the same bf16 products another way); the fallback test below
    puts the real CPU check back."""
    monkeypatch.setattr(cpu_linear, "_cpu_unavailable", lambda dtype: None)


def tiny_gpt(tie: bool = True) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=VOCAB, context_length=64, emb_dim=64, n_heads=4,
                              n_layers=2, drop_rate=0.0, qkv_bias=True,
                              tie_weights=tie)).eval().to(torch.bfloat16)


def tiny_llama(qwen3: bool = False, tie: bool = False) -> LlamaModel:
    torch.manual_seed(0)
    name = "tiny-qwen3" if qwen3 else "tiny-llama"
    return LlamaModel(LlamaConfig.preset(name, vocab_size=VOCAB, n_layers=2, dtype="bfloat16",
                                         tie_weights=tie)).eval()


FAMILIES = {"gpt2 (tied head)": tiny_gpt, "gpt untied": lambda: tiny_gpt(tie=False),
            "llama": tiny_llama, "qwen3 (tied)": lambda: tiny_llama(qwen3=True, tie=True)}


def _linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) is nn.Linear]


def test_layer_matches_plain_bf16_and_float32_arithmetic():
    """One layer against two references: PyTorch's plain bf16 ``F.linear``, and float32
    arithmetic on the same bf16 values rounded once to bf16 (at most one bf16 step apart,
    as the sums may be taken in another order)."""
    torch.manual_seed(1)
    linear = nn.Linear(96, 80).to(torch.bfloat16)
    packed = PackedLinear(linear)
    for rows in (1, 8, 13):
        x = torch.randn(2, rows, 96).to(torch.bfloat16)
        with torch.inference_mode():
            ours = packed(x)
            plain = F.linear(x, linear.weight, linear.bias)
        exact = F.linear(x.float(), linear.weight.float(), linear.bias.float())
        assert ours.dtype == torch.bfloat16 and ours.shape == (2, rows, 80)
        torch.testing.assert_close(ours, plain, atol=0, rtol=0)
        step = exact.abs().clamp_min(1e-2) * 2.0 ** -7  # one bf16 step (8 significant bits)
        assert bool(((ours.float() - exact).abs() <= step).all())
    assert packed.weight is None  # the dense copy is gone: one copy of the weight in memory


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_gives_plain_bf16_logits_and_greedy_tokens(family):
    plain = FAMILIES[family]()
    model = copy.deepcopy(plain)
    linears = _linears(model)
    assert pack_linears(model, torch.bfloat16) == len(linears) and not _linears(model)
    assert describe_linears(model) == f"{len(linears)} bfloat16, prepacked for oneDNN"
    with torch.inference_mode():
        ours, theirs = model(PROMPT), plain(PROMPT)
    torch.testing.assert_close(ours.float(), theirs.float(), atol=2e-2, rtol=2e-2)
    assert torch.equal(generate(model, PROMPT, 20), generate(plain, PROMPT, 20))


def test_tied_head_keeps_the_embedding_and_saves_normal_weights(tmp_path):
    """GPT-2's head shares the token embedding: the lookups keep the shared weight, the state
    dict is the plain model's (same names, same values, head still an alias), and a saved
    packed model loads back as a plain one with equal weights."""
    from scratchllm.weights.model_dir import load_model_dir, save_model_dir, tied_aliases

    plain = tiny_gpt()
    model = copy.deepcopy(plain)
    pack_linears(model, torch.bfloat16)
    assert model.out_head.weight is model.tok_emb.weight
    assert model.trf_blocks[0].att.qkv.weight is None
    assert tied_aliases(model) == tied_aliases(plain) == {"out_head.weight": "tok_emb.weight"}
    theirs, ours = plain.state_dict(), model.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype
               for k in theirs)
    save_model_dir(tmp_path / "saved", model)
    again, _ = load_model_dir(tmp_path / "saved")
    assert _linears(again) == _linears(plain)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), theirs.values()))


def test_batched_rows_equal_plain_bf16_batch():
    """generate_batch's transposed-weight layout leaves packed layers alone, and the rows
    are plain bf16's (8 rows share each weight read: the batched path gains too)."""
    plain = tiny_llama()
    model = copy.deepcopy(plain)
    pack_linears(model, torch.bfloat16)
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11], [4] * 9]
    assert generate_batch(model, prompts, 8) == generate_batch(plain, prompts, 8)
    assert not _linears(model)


def test_packed_model_refuses_training_loading_and_conversion():
    model = tiny_gpt()
    pack_linears(model, torch.bfloat16)
    model.train()
    with pytest.raises(ConfigError, match="cannot be trained"):
        model(PROMPT)
    with torch.no_grad():  # training mode without gradients is only a forward
        model(PROMPT)
    model.eval()
    model(PROMPT)  # eval with gradients on: no layer needs one, so it runs
    with pytest.raises(ConfigError, match="cannot move to torch.float32"):
        model.float()
    model.to("cpu")  # where it already is: fine
    with pytest.raises(ConfigError, match="load them into the model first"):
        model.load_state_dict(model.state_dict())


def test_float32_and_int8_models_are_left_alone():
    model = tiny_gpt().float()
    assert pack_linears(model, torch.bfloat16) == 0 and len(_linears(model)) == 9
    assert describe_linears(model) == "9 float32"


def test_falls_back_to_plain_bf16_with_a_note(monkeypatch):
    """Missing ops (an old or unusual PyTorch) or a CPU without bf16 instructions: the layers
    stay plain ``nn.Linear`` and the note says why and what is faster."""
    monkeypatch.setattr(cpu_linear, "_cpu_unavailable", REAL_CHECK)
    flags = {"avx2": True, "avx512_vnni": True, "avx512_bf16": True, "amx": True}
    monkeypatch.setattr(quantize_mod, "cpu_flags", lambda: dict(flags))
    monkeypatch.setattr(cpu_linear, "_ops_unavailable",
                        lambda dtype: "this PyTorch build (x) has no oneDNN prepacked linear ops")
    model = tiny_gpt()
    assert pack_linears(model, torch.bfloat16) == 0 and len(_linears(model)) == 9
    note = bf16_note("bfloat16", "cpu")
    assert note is not None and "no oneDNN prepacked linear ops" in note
    assert "--quantize int8" in note
    flags["avx512_bf16"] = flags["amx"] = False
    monkeypatch.setattr(cpu_linear, "_ops_unavailable", lambda dtype: None)
    assert pack_linears(model, torch.bfloat16) == 0
    assert "avx512_bf16" in bf16_note("bfloat16", "cpu")
    flags["amx"] = True
    assert bf16_note("bfloat16", "cpu") is None and pack_linears(model, torch.bfloat16) == 9


def test_lora_layers_kept_unmerged_are_not_packed():
    """``open_model(..., merge_adapter=False)`` keeps LoRA layers to inspect or train them:
    their base layers stay plain, the rest of the model is packed."""
    from scratchllm.model.lora import apply_lora

    model = apply_lora(tiny_gpt(tie=False), rank=2, alpha=4.0, target_modules=("qkv",))
    assert pack_linears(model, torch.bfloat16) == 9 - 2
    assert all(type(block.att.qkv.base) is nn.Linear for block in model.trf_blocks)
    assert describe_linears(model) == "2 bfloat16, 7 bfloat16, prepacked for oneDNN"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_packed_model_deep_copies_into_an_independent_one(dtype):
    """``copy.deepcopy`` of a packed model (the compiled-decode tests and any caller keeping a
    spare copy do it) gives the same tokens from its own packed weights, tie and all; the
    copy is not the original's registered layer for ``torch.compile``, so it has no handle."""
    from scratchllm.model.linear_op import register

    model = tiny_gpt().to(dtype)
    pack_linears(model, dtype)
    register(model.out_head)
    twin = copy.deepcopy(model)
    assert twin.out_head._packed is not model.out_head._packed
    assert twin.out_head.weight is twin.tok_emb.weight is not model.tok_emb.weight
    assert twin.out_head.handle is None and model.out_head.handle is not None
    with torch.inference_mode():
        assert torch.equal(twin(PROMPT), model(PROMPT))
    assert torch.equal(generate(twin, PROMPT, 12), generate(model, PROMPT, 12))
    del model  # the copy owns everything it runs on
    assert generate(twin, PROMPT, 4).shape == (1, PROMPT.shape[1] + 4)
