"""GPT-2 in Hugging Face layout <-> our GPTModel (book 5.5, from HF files instead of TF ones).

Hugging Face's GPT-2 keeps OpenAI's ``Conv1D`` layers, whose weights are stored (in, out):
the transpose of ``nn.Linear``. Everything else is a renaming::

    transformer.wte / wpe              tok_emb / pos_emb
    transformer.h.N.ln_1 / ln_2        trf_blocks.N.norm1 / norm2
    transformer.h.N.attn.c_attn        trf_blocks.N.att.qkv        (Conv1D, q|k|v fused)
    transformer.h.N.attn.c_proj        trf_blocks.N.att.out_proj   (Conv1D)
    transformer.h.N.mlp.c_fc / c_proj  trf_blocks.N.ff.fc1 / fc2   (Conv1D)
    transformer.ln_f                   final_norm
    lm_head                            out_head                    (absent when tied)

OpenAI-style ``GPT2Model`` checkpoints use the same names without the ``transformer.`` prefix.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from scratchllm.errors import CheckpointError
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.weights.adapter import FamilyAdapter

_BLOCK_PARTS = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_attn": "att.qkv",
                "attn.c_proj": "att.out_proj", "mlp.c_fc": "ff.fc1", "mlp.c_proj": "ff.fc2"}
_TOP_LEVEL = {"wte": "tok_emb", "wpe": "pos_emb", "ln_f": "final_norm"}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_BLOCK = re.compile(r"h\.(\d+)\.(.+)\.(weight|bias)")
_IGNORED = re.compile(r"(h\.\d+\.attn\.(bias|masked_bias))")  # causal-mask buffers


def hf_to_ours(name: str) -> str | None:
    """HF tensor name -> ours; None for the attention-mask buffers old checkpoints include."""
    if name == "lm_head.weight":
        return "out_head.weight"
    bare = name.removeprefix("transformer.")
    if _IGNORED.fullmatch(bare):
        return None
    module, _, kind = bare.rpartition(".")
    if module in _TOP_LEVEL:
        return f"{_TOP_LEVEL[module]}.{kind}"
    match = _BLOCK.fullmatch(bare)
    if match and match.group(2) in _BLOCK_PARTS:
        return f"trf_blocks.{match.group(1)}.{_BLOCK_PARTS[match.group(2)]}.{kind}"
    return bare  # unknown: the loader reports it as unexpected


def ours_to_hf(name: str) -> str:
    """Our tensor name -> the ``GPT2LMHeadModel`` name."""
    if name == "out_head.weight":
        return "lm_head.weight"
    module, _, kind = name.rpartition(".")
    for theirs, ours in _TOP_LEVEL.items():
        if module == ours:
            return f"transformer.{theirs}.{kind}"
    parts = module.split(".", 2)  # trf_blocks, N, rest
    for theirs, ours in _BLOCK_PARTS.items():
        if len(parts) == 3 and parts[0] == "trf_blocks" and parts[2] == ours:
            return f"transformer.h.{parts[1]}.{theirs}.{kind}"
    raise CheckpointError(f"tensor {name} has no GPT-2 equivalent; only GPTModel weights export")


def _is_conv1d(hf_name: str) -> bool:
    return hf_name.endswith(_CONV1D)


def transform_in(hf_name: str, tensor: Tensor) -> Tensor:
    """Conv1D (in, out) -> nn.Linear (out, in)."""
    return tensor.t() if _is_conv1d(hf_name) else tensor


def transform_out(hf_name: str, tensor: Tensor) -> Tensor:
    """nn.Linear (out, in) -> Conv1D (in, out)."""
    return tensor.t() if _is_conv1d(hf_name) else tensor


def config_from_hf(hf: dict[str, Any]) -> GPTConfig:
    """GPT2Config dict -> GPTConfig; refuses options our model does not implement."""
    def get(key: str, default: Any) -> Any:
        return hf.get(key, default) if hf.get(key) is not None else default

    emb_dim = get("n_embd", 768)
    unsupported = {
        "activation_function": (get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
        "n_inner": (get("n_inner", 4 * emb_dim), (4 * emb_dim,)),
        "layer_norm_epsilon": (get("layer_norm_epsilon", 1e-5), (1e-5,)),
        "scale_attn_weights": (get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "reorder_and_upcast_attn": (get("reorder_and_upcast_attn", False), (False,)),
    }
    for key, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise CheckpointError(
                f"GPT-2 config has {key}={value!r}, which scratchllm's GPTModel does not "
                f"implement (supported: {', '.join(map(repr, allowed))}); use a standard GPT-2 "
                "checkpoint"
            )
    return GPTConfig(vocab_size=get("vocab_size", 50257), context_length=get("n_positions", 1024),
                     emb_dim=emb_dim, n_heads=get("n_head", 12), n_layers=get("n_layer", 12),
                     drop_rate=0.0, qkv_bias=True,
                     tie_weights=bool(get("tie_word_embeddings", True)))


def config_to_hf(config: GPTConfig) -> dict[str, Any]:
    """GPTConfig -> a GPT2Config dict that ``AutoModelForCausalLM`` rebuilds the model from."""
    eot = 50256 if config.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, if it exists
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.context_length,
        "n_embd": config.emb_dim, "n_layer": config.n_layers, "n_head": config.n_heads,
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.drop_rate, "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate, "initializer_range": 0.02,
        "scale_attn_weights": True, "use_cache": True,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32",
    }


def build_model(config: GPTConfig) -> GPTModel:
    return GPTModel(config)


GPT2_ADAPTER = FamilyAdapter(
    family="gpt", hf_model_types=("gpt2",), config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, build_model=build_model, hf_to_ours=hf_to_ours,
    ours_to_hf=ours_to_hf, transform_in=transform_in, transform_out=transform_out,
)
