"""LoRA (appendix E): exact at init, merge reproduces the adapted model, counts, files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError, MissingFileError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.lora import (
    LoRALinear, apply_lora, lora_layers, lora_state_dict, load_lora, merge_lora, save_lora,
    trainable_parameters,
)

VOCAB = 97


def tiny_model(seed: int = 1) -> GPTModel:
    torch.manual_seed(seed)
    config = GPTConfig.preset("tiny", vocab_size=VOCAB, context_length=32, emb_dim=32, n_heads=4)
    return GPTModel(config).eval()


def perturb(model: nn.Module) -> None:
    """Give B non-zero values so the adapters change the output."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.2)


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(3))


def test_lora_linear_matches_formula_and_starts_at_base():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank=3, alpha=6.0)
    x = torch.randn(4, 6)
    assert torch.equal(layer(x), base(x))  # B = 0: exactly the base output
    assert layer.lora_B.abs().sum() == 0 and layer.lora_A.abs().sum() > 0
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = x @ base.weight.T + base.bias + (x @ layer.lora_A @ layer.lora_B) * (6.0 / 3)
    torch.testing.assert_close(layer(x), expected)


def test_apply_lora_at_init_gives_identical_logits(ids):
    model = tiny_model()
    before = model(ids)
    apply_lora(model, rank=4, alpha=8.0)
    assert set(n.rsplit(".", 1)[-1] for n in lora_layers(model)) == {"qkv", "out_proj", "fc1", "fc2"}
    assert len(lora_layers(model)) == 4 * model.config.n_layers
    assert torch.equal(model(ids), before)


def test_merge_reproduces_adapted_outputs(ids):
    model = tiny_model()
    base_logits = model(ids)
    apply_lora(model, rank=4, alpha=8.0)
    perturb(model)
    adapted = model(ids)
    assert not torch.allclose(adapted, base_logits, atol=1e-3)  # the adapters do something
    merge_lora(model)
    assert not lora_layers(model)
    assert isinstance(model.trf_blocks[0].att.qkv, nn.Linear)
    torch.testing.assert_close(model(ids), adapted, atol=1e-5, rtol=0)
    # a merged model has the plain state-dict names again
    assert set(model.state_dict()) == set(tiny_model().state_dict())


def test_trainable_count_hand_checked():
    model = tiny_model()
    total = sum(p.numel() for p in model.parameters())
    assert trainable_parameters(model) == (total, total)
    apply_lora(model, rank=2, alpha=4.0)
    d = model.config.emb_dim
    # per block: qkv d->3d, out_proj d->d, fc1 d->4d, fc2 4d->d; each adds r * (in + out)
    per_block = 2 * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    expected = model.config.n_layers * per_block
    assert trainable_parameters(model) == (expected, total + expected)
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())


def test_gradients_reach_only_adapters(ids):
    model = tiny_model()
    apply_lora(model, rank=2)
    model(ids).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (".lora_" in name), name


def test_target_modules_and_bad_settings():
    model = tiny_model()
    apply_lora(model, rank=2, target_modules=("fc2",))
    assert sorted(lora_layers(model)) == [f"trf_blocks.{i}.ff.fc2" for i in range(2)]
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(model)
    with pytest.raises(ConfigError, match="q_proj.*named: .*fc1"):
        apply_lora(tiny_model(), target_modules=("q_proj",))
    with pytest.raises(ConfigError, match="rank"):
        apply_lora(tiny_model(), rank=0)
    with pytest.raises(ConfigError, match="dropout"):
        apply_lora(tiny_model(), dropout=1.5)


def test_save_load_round_trip(tmp_path, ids):
    model = tiny_model()
    apply_lora(model, rank=3, alpha=5.0, target_modules=("qkv", "fc1"))
    perturb(model)
    expected = model(ids)
    path = save_lora(model, tmp_path / "adapter.safetensors")
    settings = json.loads((tmp_path / "adapter.json").read_text())
    assert settings["rank"] == 3 and settings["alpha"] == 5.0
    assert settings["target_modules"] == ["fc1", "qkv"]
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files

    fresh = load_lora(tiny_model(), path)  # adds LoRA layers from the sidecar
    torch.testing.assert_close(fresh(ids), expected, atol=0, rtol=0)
    assert set(lora_state_dict(fresh)) == set(lora_state_dict(model))


def test_load_mismatch_names_the_file(tmp_path):
    model = apply_lora(tiny_model(), rank=3)
    path = save_lora(model, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="a.safetensors"):
        load_lora(apply_lora(tiny_model(), rank=2), path)
    with pytest.raises(CheckpointError, match="a.safetensors"):
        load_lora(apply_lora(tiny_model(), rank=3, target_modules=("qkv",)), path)
    bigger = GPTModel(GPTConfig.preset("tiny", vocab_size=VOCAB, context_length=32))
    with pytest.raises(CheckpointError, match="a.safetensors"):
        load_lora(bigger, path)
    (tmp_path / "a.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_lora(tiny_model(), path)
    with pytest.raises(MissingFileError):
        load_lora(tiny_model(), tmp_path / "nope.safetensors")


def test_default_targets_cover_every_block_linear_of_llama_too():
    """Default LoRA adapts all of a Llama block's seven linear layers, as for GPT's four."""
    from scratchllm.model.llama import LlamaModel
    from scratchllm.model.llama_config import LlamaConfig
    from scratchllm.model.lora import lora_layers

    config = LlamaConfig.preset("tiny-llama")
    model = apply_lora(LlamaModel(config))
    per_block = {name.split(".", 2)[2] for name in lora_layers(model)}
    assert per_block == {"att.W_query", "att.W_key", "att.W_value", "att.out_proj",
                         "ff.fc1", "ff.fc2", "ff.fc3"}
    assert len(lora_layers(model)) == 7 * config.n_layers


def test_merge_in_bfloat16_rounds_once(ids):
    model = tiny_model().to(torch.bfloat16)
    apply_lora(model, rank=4, alpha=8.0, target_modules=("qkv",))
    perturb(model)
    layer = model.trf_blocks[0].att.qkv
    w, a, b = (t.detach().clone() for t in (layer.base.weight, layer.lora_A, layer.lora_B))
    once = (w.float() + (a.float() @ b.float()).T * 2.0).to(torch.bfloat16)
    twice = w + ((a @ b).T * 2.0)  # every step in bfloat16
    assert not torch.equal(once, twice)
    merge_lora(model)
    assert torch.equal(model.trf_blocks[0].att.qkv.weight, once)
