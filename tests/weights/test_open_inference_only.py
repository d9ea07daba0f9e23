"""``open_model(..., inference_only=True)``, what generate, chat and serve open: bf16 linear
layers on the CPU come back prepacked for oneDNN, for every family and for a merged LoRA
adapter, and give the greedy tokens of the same model opened plainly."""

from __future__ import annotations

import pytest
import torch

from scratchllm.generate import generate
from scratchllm.model import GPTConfig, GPTModel, LlamaConfig, LlamaModel
from scratchllm.model import cpu_linear
from scratchllm.model.cpu_linear import PackedLinear
from scratchllm.model.lora import apply_lora
from scratchllm.weights.auto import open_model
from scratchllm.weights.hf_export import export_hf_dir
from scratchllm.weights.lora_adapter import save_lora_adapter
from scratchllm.weights.model_dir import save_model_dir

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(cpu_linear._ops_unavailable(torch.bfloat16) is not None,
                                 reason=f"{cpu_linear._ops_unavailable(torch.bfloat16)}")]

VOCAB = 101
PROMPT = [3, 14, 15, 92, 65, 35, 89, 79]


@pytest.fixture(autouse=True)
def ops_usable(monkeypatch):
    """Pack wherever the ops run, even where the CPU lacks bf16 instructions (see
    tests/model/test_cpu_linear.py)."""
    monkeypatch.setattr(cpu_linear, "_cpu_unavailable", lambda dtype: None)


def tiny_gpt() -> GPTModel:
    torch.manual_seed(1)
    return GPTModel(GPTConfig(vocab_size=VOCAB, context_length=32, emb_dim=32, n_heads=4,
                              n_layers=2, drop_rate=0.0, qkv_bias=True, tie_weights=True))


def tiny_llama(qwen3: bool = False) -> LlamaModel:
    torch.manual_seed(1)
    return LlamaModel(LlamaConfig(vocab_size=VOCAB, context_length=64, emb_dim=32, n_heads=4,
                                  n_kv_groups=2, n_layers=2, hidden_dim=64, head_dim=8,
                                  qk_norm=qwen3, dtype="float32"))


def _packed(model) -> int:
    return sum(isinstance(m, PackedLinear) and m.dtype == torch.bfloat16
               for m in model.modules())


def _same_greedy(directory, **kwargs) -> int:
    """Open ``directory`` plainly and inference-only in bf16; return the packed layer count
    after checking both give the same greedy continuation."""
    plain = open_model(directory, dtype="bfloat16", **kwargs).model
    fast = open_model(directory, dtype="bfloat16", inference_only=True, **kwargs).model
    assert _packed(plain) == 0
    assert generate(fast, PROMPT, 16) == generate(plain, PROMPT, 16)
    return _packed(fast)


@pytest.mark.parametrize("family", ["gpt2 hf", "gpt", "llama", "qwen3"])
def test_every_family_opens_packed_with_plain_bf16_tokens(tmp_path, family):
    if family == "gpt2 hf":
        export_hf_dir(tiny_gpt(), tmp_path / "m")
        expected = 2 * 4 + 1  # qkv, out_proj, fc1, fc2 per block, and the tied head
    else:
        model = tiny_gpt() if family == "gpt" else tiny_llama(family == "qwen3")
        save_model_dir(tmp_path / "m", model)
        expected = 2 * 4 + 1 if family == "gpt" else 2 * 7 + 1
    assert _same_greedy(tmp_path / "m") == expected


def test_merged_lora_adapter_is_packed_after_merging(tmp_path):
    base = tiny_llama()
    export_hf_dir(base, tmp_path / "base")
    apply_lora(base, rank=4, alpha=8.0)
    with torch.no_grad():  # a non-zero update, so the merge changes the weights
        for name, param in base.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0, 0.2)
    save_lora_adapter(base, tmp_path / "adapter", base_source=tmp_path / "base")
    assert _same_greedy(tmp_path / "base", adapter=tmp_path / "adapter") == 2 * 7 + 1
    merged = open_model(tmp_path / "base", dtype="bfloat16", adapter=tmp_path / "adapter").model
    unmerged = open_model(tmp_path / "base", dtype="bfloat16").model
    assert generate(merged, PROMPT, 16) != generate(unmerged, PROMPT, 16)  # the adapter counts


def test_float32_and_int8_are_not_packed(tmp_path):
    save_model_dir(tmp_path / "m", tiny_gpt())
    assert _packed(open_model(tmp_path / "m", inference_only=True).model) == 0
    int8 = open_model(tmp_path / "m", inference_only=True, quantize="int8").model
    assert _packed(int8) == 0 and getattr(int8, "quantization") == "int8"
