"""``model.decode_layout``: the float32 CPU layouts for decoding one row (transposed weights;
oneDNN-packed on AMD CPUs) and many rows (oneDNN-packed weights) change no value, are chosen
at load time by ``open_model(inference_only=True, decode_rows=N)``, and never touch a model
that ``generate_batch`` is handed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchllm.errors import ConfigError
from scratchllm.generate import generate, generate_batch
from scratchllm.model import GPTConfig, GPTModel, LlamaConfig, LlamaModel
from scratchllm.model.cpu_linear import PackedLinear, describe_linears, packed_unavailable
from scratchllm.model import cpu_matmul
from scratchllm.model.decode_layout import prepare_decoding, use_transposed_layout
from scratchllm.weights.auto import open_model
from scratchllm.weights.model_dir import load_model_dir, save_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")
needs_ops = pytest.mark.skipif(packed_unavailable(torch.float32) is not None,
                               reason=f"{packed_unavailable(torch.float32)}")
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15, 16]]


@pytest.fixture(autouse=True)
def mkl_cpu(monkeypatch):
    """The one-row layout follows the CPU's matmul library (by vendor): tests pin it, MKL's
    (Intel's) unless they say."""
    monkeypatch.setenv(cpu_matmul.ENV, "mkl")


def _gpt() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4,
                              n_layers=2, drop_rate=0.0, qkv_bias=True, tie_weights=True)).eval()


def _llama() -> LlamaModel:
    torch.manual_seed(0)
    return LlamaModel(LlamaConfig.preset("tiny-llama", vocab_size=64, n_layers=1,
                                         dtype="float32")).eval()


def _packed(model) -> int:
    return sum(isinstance(m, PackedLinear) and m.dtype == torch.float32
               for m in model.modules())


def _saved_equal(tmp_path, model, reference) -> None:
    """``save_model_dir`` writes the reference's contiguous (out, in) values."""
    loaded, _ = load_model_dir(save_model_dir(tmp_path / "m", model))
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    for name, value in loaded.state_dict().items():
        assert value.is_contiguous(), name


def test_transposed_layout_same_values_tokens_tie_and_saved_whole(tmp_path):
    model, reference = _gpt(), _gpt()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    assert prepare_decoding(model, 1) == 2 * 4 + 1  # qkv, out_proj, fc1, fc2 per block + head
    assert use_transposed_layout(model) == 0  # done once
    assert model.out_head.weight.t().is_contiguous()
    assert model.out_head.weight is model.tok_emb.weight  # the tie survives
    for name, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[name]), name
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), reference(ids), rtol=1e-5, atol=1e-5)
    assert generate_batch(model, PROMPTS, 8) == generate_batch(reference, PROMPTS, 8)
    _saved_equal(tmp_path, model, reference)


def test_generate_batch_leaves_the_callers_model_alone():
    """The fast layout is a load-time choice: a model being trained (wrapped by DDP/FSDP, its
    parameters held by an optimizer) keeps its storage, parameters and values."""
    model = _gpt()
    before = {name: (p, p.data_ptr(), p.stride(), p.detach().clone())
              for name, p in model.named_parameters()}
    generate_batch(model, PROMPTS, 4)
    for name, p in model.named_parameters():
        param, ptr, stride, value = before[name]
        assert p is param and p.data_ptr() == ptr and p.stride() == stride, name
        assert torch.equal(p, value), name


@needs_ops
@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_packed_rows_equal_plain_model_and_each_prompt_alone(tmp_path, family):
    make = _gpt if family == "gpt" else _llama
    model, reference = make(), make()
    expected = 2 * 4 + 1 if family == "gpt" else 7 + 1  # q, k, v, o, gate, up, down + head
    assert prepare_decoding(model, 4) == expected == _packed(model)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6]])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), reference(ids), rtol=1e-5, atol=1e-5)
    together = generate_batch(model, PROMPTS, 8)
    assert together == [generate(model, p, 8)[len(p):] for p in PROMPTS]
    assert together == generate_batch(reference, PROMPTS, 8)
    if family == "gpt":
        assert model.out_head.weight is model.tok_emb.weight  # the tie survives, packed beside
    _saved_equal(tmp_path, model, reference)


@needs_ops
def test_packed_linear_matches_f_linear_for_any_row_count():
    torch.manual_seed(3)
    linear = torch.nn.Linear(48, 80)
    packed = PackedLinear(linear, rows=8)
    with torch.inference_mode():
        for rows in (1, 3, 8, 21):
            x = torch.randn(rows, 48)
            torch.testing.assert_close(packed(x), F.linear(x, linear.weight, linear.bias),
                                       rtol=1e-5, atol=1e-5)
        x = torch.randn(8, 48)  # a row's result does not depend on the rows beside it
        assert torch.equal(packed(x)[2], packed(torch.cat([x[2:3], torch.zeros(7, 48)]))[0])


@needs_ops
def test_packed_model_refuses_training_other_dtypes_and_loading():
    model = _gpt()
    prepare_decoding(model, 8)
    model.train()
    with pytest.raises(ConfigError, match="cannot be trained"):
        model(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ConfigError, match="cannot move"):
        model.to(torch.bfloat16)
    with pytest.raises(ConfigError, match="open_model does both"):
        model.load_state_dict(_gpt().state_dict())


@pytest.mark.parametrize("rows", [0, -1, 2.0, True])
def test_bad_row_count_is_refused(rows):
    with pytest.raises(ConfigError, match="integer >= 1"):
        prepare_decoding(_gpt(), rows)


@needs_ops
def test_open_model_lays_out_only_inference_models(tmp_path):
    save_model_dir(tmp_path / "m", _gpt())
    plain = open_model(tmp_path / "m").model
    assert not plain.out_head.weight.t().is_contiguous() and _packed(plain) == 0
    single = open_model(tmp_path / "m", inference_only=True).model
    assert single.out_head.weight.t().is_contiguous() and _packed(single) == 0
    batched = open_model(tmp_path / "m", inference_only=True, decode_rows=8).model
    assert _packed(batched) == 2 * 4 + 1
    assert describe_linears(batched) == "9 float32, prepacked for oneDNN"  # generate --stats
    int8 = open_model(tmp_path / "m", inference_only=True, decode_rows=8, quantize="int8").model
    assert _packed(int8) == 0 and describe_linears(int8) == "9 int8"
    assert generate_batch(batched, PROMPTS, 8) == generate_batch(plain, PROMPTS, 8)
    with pytest.raises(ConfigError, match="integer >= 1"):
        open_model(tmp_path / "does-not-matter", inference_only=True, decode_rows=0)


@needs_ops
def test_unmerged_lora_layers_keep_their_dense_base():
    from scratchllm.model.lora import apply_lora

    model = _llama()
    apply_lora(model, rank=2, alpha=4.0)
    assert prepare_decoding(model, 8) == 1  # only the untied head; LoRA bases stay dense
    assert all(p is not None for p in model.parameters())


@needs_ops
def test_one_row_is_packed_on_amd_and_gives_the_same_tokens(monkeypatch, tmp_path):
    """MKL's GEMV takes a slower path on AMD CPUs, oneDNN's packed one does not: where the
    matmul library is oneDNN (AMD, or SCRATCHLLM_CPU_MATMUL=onednn) one row is packed too
    (same values, tokens and saved weights); under MKL it stays transposed."""
    monkeypatch.setenv(cpu_matmul.ENV, "onednn")
    model, reference = _gpt(), _gpt()
    assert prepare_decoding(model, 1) == 2 * 4 + 1 == _packed(model)
    assert model.out_head.weight is model.tok_emb.weight
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), reference(ids), rtol=1e-5, atol=1e-5)
    assert torch.equal(generate(model, ids, 10), generate(reference, ids, 10))
    _saved_equal(tmp_path, model, reference)
    save_model_dir(tmp_path / "m", _gpt())
    single = open_model(tmp_path / "m", inference_only=True).model
    assert _packed(single) == 9 and describe_linears(single) == "9 float32, prepacked for oneDNN"
    for vendor, packed in (("AuthenticAMD", 9), ("GenuineIntel", 0), (None, 0)):
        monkeypatch.setenv(cpu_matmul.ENV, "auto")
        monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda v=vendor: v)
        cpu_matmul._amd.cache_clear()
        try:
            other = _gpt()
            prepare_decoding(other, 1)
        finally:
            cpu_matmul._amd.cache_clear()
        assert _packed(other) == packed, vendor
        assert other.out_head.weight.t().is_contiguous() == (packed == 0), vendor
