"""Hugging Face Llama 3 / Qwen3 checkpoints <-> ``LlamaModel`` (book bonus: Llama/Qwen3 weights).

Two ``FamilyAdapter``s plug these families into the generic loader in ``scratchllm.weights.hf``:
``LLAMA_ADAPTER`` (config.json model_type "llama") and ``QWEN3_ADAPTER`` ("qwen3"). They
share one model class; Qwen3 differs only by per-head q/k RMSNorm and an explicit head_dim.

No tensor needs changing: Hugging Face stores q_proj/k_proj for the "rotate half" RoPE layout,
which is the one ``scratchllm.model.rope`` implements, so ``transform_in``/``transform_out``
are the identity. (Meta's original ``consolidated.pth`` files use the interleaved layout and
would need the q/k rows permuted; load the Hugging Face release instead.)
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from scratchllm.errors import CheckpointError, ConfigError
from scratchllm.model.llama import LlamaConfig, LlamaModel
from scratchllm.weights.adapter import FamilyAdapter

# Our per-layer names (inside trf_blocks.N.) and Hugging Face's (inside model.layers.N.).
_LAYER_NAMES = {
    "att.W_query": "self_attn.q_proj",
    "att.W_key": "self_attn.k_proj",
    "att.W_value": "self_attn.v_proj",
    "att.out_proj": "self_attn.o_proj",
    "att.q_norm": "self_attn.q_norm",
    "att.k_norm": "self_attn.k_norm",
    "ff.fc1": "mlp.gate_proj",
    "ff.fc2": "mlp.up_proj",
    "ff.fc3": "mlp.down_proj",
    "norm1": "input_layernorm",
    "norm2": "post_attention_layernorm",
}
_TOP_NAMES = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "final_norm.weight": "model.norm.weight",
    "out_head.weight": "lm_head.weight",
}
_HF_LAYER = {hf: ours for ours, hf in _LAYER_NAMES.items()}
_HF_TOP = {hf: ours for ours, hf in _TOP_NAMES.items()}
_HF_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
_OUR_LAYER_RE = re.compile(r"trf_blocks\.(\d+)\.(.+)\.(weight|bias)")


def hf_to_ours(name: str) -> str | None:
    """``model.layers.3.mlp.gate_proj.weight`` -> ``trf_blocks.3.ff.fc1.weight``.

    Rotary ``inv_freq`` buffers (older checkpoints) map to None: we recompute them. Unknown
    names come back unchanged, so the loader reports them as unexpected tensors.
    """
    if name.endswith("rotary_emb.inv_freq"):
        return None
    if name in _HF_TOP:
        return _HF_TOP[name]
    match = _HF_LAYER_RE.fullmatch(name)
    if match and match.group(2) in _HF_LAYER:
        layer, module, kind = match.groups()
        return f"trf_blocks.{layer}.{_HF_LAYER[module]}.{kind}"
    return name  # unknown: the loader reports it as unexpected


def ours_to_hf(name: str) -> str:
    """Inverse of ``hf_to_ours`` for export."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    match = _OUR_LAYER_RE.fullmatch(name)
    if match and match.group(2) in _LAYER_NAMES:
        layer, module, kind = match.groups()
        return f"model.layers.{layer}.{_LAYER_NAMES[module]}.{kind}"
    raise CheckpointError(f"{name!r} is not a LlamaModel parameter; cannot export it")


def _rope_settings(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, llama3 scaling dict or None) from either config layout.

    transformers 4.x writes ``rope_theta`` and ``rope_scaling``; 5.x nests both in
    ``rope_parameters``.
    """
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or params
    theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise ConfigError(
            f"RoPE type {rope_type!r} is not supported (only 'default' and Llama 3's 'llama3'); "
            "this checkpoint needs a model with that position scheme")
    return float(theta), dict(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_context_length=int(scaling["original_max_position_embeddings"]),
    )


def config_from_hf(hf: dict) -> LlamaConfig:
    """A Hugging Face config.json dict (Llama or Qwen3) -> ``LlamaConfig``."""
    model_type = hf.get("model_type")
    if model_type not in ("llama", "qwen3"):
        raise ConfigError(f"model_type {model_type!r} is not a Llama or Qwen3 config")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {hf['hidden_act']!r} is not supported; Llama uses 'silu'")
    if hf.get("mlp_bias") or hf.get("use_sliding_window"):
        raise ConfigError("mlp_bias and sliding-window attention are not supported by LlamaModel")
    try:
        theta, scaling = _rope_settings(hf)
        n_heads = hf["num_attention_heads"]
        dtype = str(hf.get("dtype") or hf.get("torch_dtype") or "float32").replace("torch.", "")
        return LlamaConfig(
            vocab_size=hf["vocab_size"],
            context_length=hf["max_position_embeddings"],
            emb_dim=hf["hidden_size"],
            n_heads=n_heads,
            n_kv_groups=hf.get("num_key_value_heads") or n_heads,
            n_layers=hf["num_hidden_layers"],
            hidden_dim=hf["intermediate_size"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
            rope_base=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_weights=bool(hf.get("tie_word_embeddings", False)),
            qk_norm=model_type == "qwen3",
            attention_bias=bool(hf.get("attention_bias", False)),
            dtype=dtype,
        )
    except KeyError as missing:
        raise ConfigError(f"the {model_type} config.json lacks {missing}; is the file complete?")


def config_to_hf(config: LlamaConfig) -> dict[str, Any]:
    """``LlamaConfig`` -> a config.json dict that transformers 4.x and 5.x both read.

    Qwen3 is recognised by ``qk_norm`` (the only architectural difference here).
    """
    qwen3 = config.qk_norm
    rope_params: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_base}
    if config.rope_scaling is not None:
        s = config.rope_scaling
        rope_params = {"rope_type": "llama3", "rope_theta": config.rope_base,
                       "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                       "high_freq_factor": s.high_freq_factor,
                       "original_max_position_embeddings": s.original_context_length}
    return {
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen3 else "llama",
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.context_length,
        "hidden_size": config.emb_dim,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_groups,
        "num_hidden_layers": config.n_layers,
        "intermediate_size": config.hidden_dim,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_base,
        "rope_scaling": rope_params if config.rope_scaling is not None else None,
        "rope_parameters": rope_params,
        "tie_word_embeddings": config.tie_weights,
        "attention_bias": config.attention_bias,
        "mlp_bias": False,
        "torch_dtype": config.dtype,
        "dtype": config.dtype,
    }


def build_model(config: LlamaConfig) -> nn.Module:
    return LlamaModel(config)


LLAMA_ADAPTER = FamilyAdapter(
    family="llama", hf_model_types=("llama",), config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, build_model=build_model, hf_to_ours=hf_to_ours,
    ours_to_hf=ours_to_hf,
)
QWEN3_ADAPTER = FamilyAdapter(
    family="qwen3", hf_model_types=("qwen3",), config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, build_model=build_model, hf_to_ours=hf_to_ours,
    ours_to_hf=ours_to_hf,
)
