"""The Llama/Qwen3 adapter: tensor names both ways, config.json in both transformers layouts."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ConfigError
from scratchllm.model import LlamaConfig, LlamaModel
from scratchllm.weights.hf_llama import (
    LLAMA_ADAPTER,
    QWEN3_ADAPTER,
    config_from_hf,
    config_to_hf,
    hf_to_ours,
    ours_to_hf,
)

# The published config.json files (transformers 4.x layout), abridged to the relevant keys.
LLAMA32_1B_JSON = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
    "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}
QWEN3_06B_JSON = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 1024, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "model_type": "qwen3", "num_attention_heads": 16,
    "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False,
    "vocab_size": 151936,
}


@pytest.mark.parametrize("hf, ours", [
    ("model.embed_tokens.weight", "tok_emb.weight"),
    ("model.norm.weight", "final_norm.weight"),
    ("lm_head.weight", "out_head.weight"),
    ("model.layers.11.self_attn.q_proj.weight", "trf_blocks.11.att.W_query.weight"),
    ("model.layers.0.self_attn.k_proj.bias", "trf_blocks.0.att.W_key.bias"),
    ("model.layers.2.self_attn.v_proj.weight", "trf_blocks.2.att.W_value.weight"),
    ("model.layers.2.self_attn.o_proj.weight", "trf_blocks.2.att.out_proj.weight"),
    ("model.layers.3.self_attn.q_norm.weight", "trf_blocks.3.att.q_norm.weight"),
    ("model.layers.3.self_attn.k_norm.weight", "trf_blocks.3.att.k_norm.weight"),
    ("model.layers.4.mlp.gate_proj.weight", "trf_blocks.4.ff.fc1.weight"),
    ("model.layers.4.mlp.up_proj.weight", "trf_blocks.4.ff.fc2.weight"),
    ("model.layers.4.mlp.down_proj.weight", "trf_blocks.4.ff.fc3.weight"),
    ("model.layers.5.input_layernorm.weight", "trf_blocks.5.norm1.weight"),
    ("model.layers.5.post_attention_layernorm.weight", "trf_blocks.5.norm2.weight"),
])
def test_names_map_both_ways(hf, ours):
    assert hf_to_ours(hf) == ours
    assert ours_to_hf(ours) == hf


def test_rotary_buffers_are_ignored_and_unknown_names_passed_through():
    assert hf_to_ours("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    assert hf_to_ours("model.rotary_emb.inv_freq") is None
    unknown = "model.layers.0.mlp.experts.0.weight"
    assert hf_to_ours(unknown) == unknown  # the loader reports it as unexpected


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_every_parameter_exports_to_a_transformers_name(model_type):
    transformers = pytest.importorskip("transformers")
    preset = "tiny-qwen3" if model_type == "qwen3" else "tiny-llama"
    ours = LlamaModel(LlamaConfig.preset(preset, attention_bias=True))
    hf_config = transformers.AutoConfig.for_model(**config_to_hf(ours.config))
    hf = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert {ours_to_hf(n) for n in ours.state_dict()} == set(hf.state_dict())


def test_published_llama32_config_gives_the_preset():
    assert config_from_hf(LLAMA32_1B_JSON) == LlamaConfig.preset("llama3.2-1b")


def test_published_qwen3_config_gives_the_preset():
    assert config_from_hf(QWEN3_06B_JSON) == LlamaConfig.preset("qwen3-0.6b")


def test_transformers5_rope_parameters_layout():
    v5 = {k: v for k, v in LLAMA32_1B_JSON.items() if k not in ("rope_scaling", "rope_theta")}
    v5["rope_parameters"] = {**LLAMA32_1B_JSON["rope_scaling"], "rope_theta": 500000.0}
    v5["dtype"] = v5.pop("torch_dtype")
    assert config_from_hf(v5) == LlamaConfig.preset("llama3.2-1b")
    legacy = {**LLAMA32_1B_JSON, "rope_scaling": {**LLAMA32_1B_JSON["rope_scaling"]}}
    legacy["rope_scaling"]["type"] = legacy["rope_scaling"].pop("rope_type")
    assert config_from_hf(legacy) == LlamaConfig.preset("llama3.2-1b")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3", "llama3-8b", "qwen3-1.7b"])
def test_config_round_trips_through_transformers(name):
    transformers = pytest.importorskip("transformers")
    config = LlamaConfig.preset(name)
    hf_config = transformers.AutoConfig.for_model(**config_to_hf(config))
    assert config_from_hf(hf_config.to_dict()) == config


@pytest.mark.parametrize("name", ["llama3.2-1b", "llama3.2-3b", "llama3-8b", "qwen3-1.7b"])
def test_preset_sizes_equal_transformers_models(name):
    transformers = pytest.importorskip("transformers")
    config = LlamaConfig.preset(name)
    hf_config = transformers.AutoConfig.for_model(**config_to_hf(config))
    with torch.device("meta"):
        ours = LlamaModel(config)
        hf = transformers.AutoModelForCausalLM.from_config(hf_config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(hf)


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE type 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"model_type": "gpt2"}, "model_type 'gpt2'"),
    ({"use_sliding_window": True}, "sliding-window"),
    ({"hidden_size": "drop"}, "lacks 'hidden_size'"),
])
def test_unsupported_configs_are_refused_clearly(change, message):
    broken = {**LLAMA32_1B_JSON, **change}
    broken = {k: v for k, v in broken.items() if v != "drop"}
    with pytest.raises(ConfigError, match=message):
        config_from_hf(broken)


def test_adapters_declare_their_families():
    assert (LLAMA_ADAPTER.family, LLAMA_ADAPTER.hf_model_types) == ("llama", ("llama",))
    assert (QWEN3_ADAPTER.family, QWEN3_ADAPTER.hf_model_types) == ("qwen3", ("qwen3",))
    qwen_hf = QWEN3_ADAPTER.config_to_hf(LlamaConfig.preset("qwen3-0.6b"))
    assert qwen_hf["architectures"] == ["Qwen3ForCausalLM"] and qwen_hf["model_type"] == "qwen3"
    llama_hf = LLAMA_ADAPTER.config_to_hf(LlamaConfig.preset("llama3.2-1b"))
    assert llama_hf["architectures"] == ["LlamaForCausalLM"]
    assert llama_hf["torch_dtype"] == "bfloat16"
    tensor = torch.randn(3)
    assert LLAMA_ADAPTER.transform_in("model.norm.weight", tensor) is tensor
