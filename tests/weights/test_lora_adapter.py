"""LoRA adapters in PEFT's layout: peft -> scratchllm and scratchllm -> peft give peft's logits.

The reference is the ``peft`` library itself on tiny transformers models (GPT-2 with its
Conv1D layers and fused c_attn; Llama with grouped-query attention and SwiGLU).
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from scratchllm.model import GPTConfig, GPTModel, LlamaConfig, LlamaModel  # noqa: E402
from scratchllm.model.lora import LoRALinear, apply_lora, lora_layers  # noqa: E402
from scratchllm.weights.auto import open_model  # noqa: E402
from scratchllm.weights.hf_export import export_hf_dir  # noqa: E402
from scratchllm.weights.lora_adapter import (  # noqa: E402
    load_lora_adapter, save_lora_adapter,
)

VOCAB = 101
TOL = 1e-5
# peft asks transformers a deprecated question while wrapping; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py: one_thread)."""


def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))


def hf_gpt2():
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB,
                                     n_positions=32, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def hf_llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
    return transformers.LlamaForCausalLM(config).eval()


# Rank/alpha options that each change the scaling: rsLoRA for GPT-2, per-module patterns for
# Llama, so a wrong scaling anywhere shows in the logits.
PEFT_SETTINGS = {
    "gpt2": (hf_gpt2, dict(r=4, lora_alpha=8, use_rslora=True, fan_in_fan_out=True,
                           target_modules=["c_attn", "c_proj", "c_fc"])),
    "llama": (hf_llama, dict(r=4, lora_alpha=16, rank_pattern={"down_proj": 2},
                             alpha_pattern={"q_proj": 3.0},
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"])),
}


def randomize_peft(model) -> None:
    """Non-zero B (PEFT starts it at zero) so every adapter changes the output."""
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_peft_written_adapter_gives_peft_logits(tmp_path, family):
    make, settings = PEFT_SETTINGS[family]
    torch.manual_seed(0)
    hf = make()
    hf.save_pretrained(tmp_path / "base")
    base_hash = sha(tmp_path / "base" / "model.safetensors")
    wrapped = peft.get_peft_model(hf, peft.LoraConfig(task_type="CAUSAL_LM", **settings))
    randomize_peft(wrapped)
    wrapped.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = wrapped.eval()(ids()).logits
        base_logits = open_model(tmp_path / "base").model(ids())
    assert (expected - base_logits).abs().max() > 0.1  # the adapter matters

    merged = open_model(tmp_path / "base", adapter=tmp_path / "adapter")
    assert not lora_layers(merged.model) and merged.metadata["adapter"].endswith("adapter")
    kept = open_model(tmp_path / "base", adapter=tmp_path / "adapter", merge_adapter=False)
    assert len(lora_layers(kept.model)) == len(peft_lora_modules(wrapped))
    with torch.no_grad():
        assert (merged.model(ids()) - expected).abs().max() <= TOL
        assert (kept.model(ids()) - expected).abs().max() <= TOL
    # merging changed the model in memory, never the memory-mapped checkpoint
    assert sha(tmp_path / "base" / "model.safetensors") == base_hash


def tiny_gpt(tie: bool = False) -> GPTModel:
    torch.manual_seed(1)
    return GPTModel(GPTConfig(vocab_size=VOCAB, context_length=32, emb_dim=32, n_heads=4,
                              n_layers=2, drop_rate=0.0, qkv_bias=True,
                              tie_weights=tie)).eval()


def tiny_llama(qwen3: bool = False) -> LlamaModel:
    torch.manual_seed(1)
    return LlamaModel(LlamaConfig(vocab_size=VOCAB, context_length=64, emb_dim=32, n_heads=4,
                                  n_kv_groups=2, n_layers=2, hidden_dim=64, head_dim=8,
                                  qk_norm=qwen3, dtype="float32")).eval()


SCRATCHLLM_MODELS = {"gpt": tiny_gpt, "llama": tiny_llama, "qwen3": lambda: tiny_llama(True)}


def fine_tune(model, steps: int = 4) -> None:
    """A few real LoRA training steps (B moves off zero), then eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=0.05)
    gen = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, VOCAB, (4, 9), generator=gen)
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def peft_lora_modules(peft_model) -> set[str]:
    prefix = "base_model.model."
    return {n.removeprefix(prefix) for n, m in peft_model.named_modules()
            if isinstance(m, peft.tuners.lora.LoraLayer)}


@pytest.mark.parametrize("family", sorted(SCRATCHLLM_MODELS))
def test_scratchllm_adapter_loads_in_peft_with_the_same_logits(tmp_path, family):
    model = SCRATCHLLM_MODELS[family]()
    export_hf_dir(model, tmp_path / "base")
    apply_lora(model, rank=4, alpha=8.0)
    fine_tune(model)
    with torch.no_grad():
        expected = model(ids())
    out = save_lora_adapter(model, tmp_path / "adapter", base_source=tmp_path / "base")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    assert config["fan_in_fan_out"] is (family == "gpt")  # GPT-2's Conv1D stores W^T
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["bias"] == "none"
    assert sorted(p.name for p in out.iterdir()) == [
        ".scratchllm", "README.md", "adapter_config.json", "adapter_model.safetensors"]

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    theirs = peft.PeftModel.from_pretrained(hf, out).eval()
    assert len(peft_lora_modules(theirs)) == len(lora_layers(model))
    with torch.no_grad():
        assert (theirs(ids()).logits - expected).abs().max() <= TOL
        again = open_model(tmp_path / "base", adapter=out).model(ids())
        assert (again - expected).abs().max() <= TOL


def test_target_modules_name_exactly_what_was_adapted(tmp_path):
    """Attention only: c_proj must not also catch mlp.c_proj; one block only: full paths;
    a layer with its own rank and alpha goes to rank_pattern/alpha_pattern."""
    model = tiny_gpt()
    export_hf_dir(model, tmp_path / "base")
    apply_lora(model, rank=4, alpha=8.0, target_modules=("qkv", "out_proj",
                                                         "trf_blocks.0.ff.fc2"))
    block1 = model.trf_blocks[1].att
    block1.out_proj = LoRALinear(block1.out_proj.base, rank=2, alpha=3.0)
    fine_tune(model)
    with torch.no_grad():
        expected = model(ids())
    out = save_lora_adapter(model, tmp_path / "adapter", base_source="base")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == ["attn.c_proj", "c_attn", "transformer.h.0.mlp.c_proj"]
    assert config["rank_pattern"] == {r"transformer\.h\.1\.attn\.c_proj": 2}
    assert config["alpha_pattern"] == {r"transformer\.h\.1\.attn\.c_proj": 3.0}
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    theirs = peft.PeftModel.from_pretrained(hf, out).eval()
    assert peft_lora_modules(theirs) == {
        "transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn",
        "transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj",
        "transformer.h.0.mlp.c_proj"}
    with torch.no_grad():
        assert (theirs(ids()).logits - expected).abs().max() <= TOL


def test_bf16_merge_rounds_once(tmp_path):
    model = tiny_gpt()
    export_hf_dir(model, tmp_path / "base")
    apply_lora(model, rank=4, alpha=8.0, target_modules=("qkv",))
    fine_tune(model)
    layer = model.trf_blocks[0].att.qkv
    base, delta = layer.base.weight.detach().to(torch.bfloat16), layer.delta_weight().detach()
    once = (base.float() + delta).to(torch.bfloat16)  # the bf16 base plus the exact update
    twice = base + delta.to(torch.bfloat16)          # update rounded first, then the sum
    assert not torch.equal(once, twice)
    save_lora_adapter(model, tmp_path / "adapter")
    loaded = open_model(tmp_path / "base", dtype="bfloat16", adapter=tmp_path / "adapter")
    merged = loaded.model.trf_blocks[0].att.qkv.weight
    assert merged.dtype == torch.bfloat16
    torch.testing.assert_close(merged, once, atol=0, rtol=0)


def test_load_into_model_with_lora_layers_and_train_on(tmp_path):
    model = apply_lora(tiny_gpt(), rank=4, alpha=8.0)
    fine_tune(model)
    out = save_lora_adapter(model, tmp_path / "adapter")
    fresh = load_lora_adapter(tiny_gpt(), out)  # adds the layers, freezes the rest
    assert all(p.requires_grad == (".lora_" in n) for n, p in fresh.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids()), model(ids()), atol=0, rtol=0)
    same_shape = apply_lora(tiny_gpt(), rank=4, alpha=8.0)
    load_lora_adapter(same_shape, out)  # fills existing layers
    with torch.no_grad():
        torch.testing.assert_close(same_shape(ids()), model(ids()), atol=0, rtol=0)
