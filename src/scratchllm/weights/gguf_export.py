"""Export a model as one GGUF file that llama.cpp (``llama-cli``, ``llama-server``,
``llama-cpp-python``) and Ollama load.

Written with ``gguf``, llama.cpp's own Python package, the way its ``convert_hf_to_gguf.py``
writes the same architectures: tensor names come from ``gguf``'s name map applied to our
Hugging Face names (``scratchllm.weights.hf_gpt2`` / ``hf_llama``), so they are llama.cpp's by
construction; metadata keys are the ones llama.cpp reads for "gpt2", "llama" and "qwen3".

Two layout facts differ from the safetensors export. llama.cpp's "llama" graph rotates
*adjacent* feature pairs, while our RoPE (and Hugging Face's) rotates halves, so query and key
rows are permuted per head; "qwen3" uses the halves layout and stays as is. Llama 3.1's RoPE
scaling becomes a ``rope_freqs`` tensor of per-frequency divisors.

Quantization follows llama.cpp: 1-D tensors, norms and GPT-2's position table stay f32; a
matrix whose rows q8_0 cannot split into 32-value blocks falls back to f16.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.utils.atomic import fsync_dir, fsync_file, remove_dead_temps, temp_name
from scratchllm.weights.gguf_files import OWNER_KEY, check_gguf_target
from scratchllm.weights.gguf_tokenizer import add_vocab, gguf_vocab
from scratchllm.weights.model_dir import tied_aliases

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
GGUF_FAMILIES = ("gpt2 (GPTModel)", "llama (Llama 3.x)", "qwen3")


def _gguf():
    try:
        import gguf
    except ImportError as err:  # a trimmed install
        raise ConfigError("GGUF export needs the 'gguf' package: pip install gguf") from err
    return gguf


def gguf_arch(model: nn.Module) -> str:
    """llama.cpp's architecture name for ``model``; ConfigError naming the supported ones."""
    from scratchllm.model.gpt import GPTModel
    from scratchllm.model.llama import LlamaModel

    if isinstance(model, GPTModel):
        return "gpt2"
    if isinstance(model, LlamaModel):
        c = model.config
        if c.qk_norm:
            if c.rope_scaling is not None:
                raise ConfigError("llama.cpp's qwen3 architecture has no RoPE scaling; this "
                                  "Qwen3 model with Llama 3 rope_scaling cannot export to GGUF")
            return "qwen3"
        return "llama"
    raise ConfigError(f"{type(model).__name__} has no GGUF export; supported families: "
                      f"{', '.join(GGUF_FAMILIES)}")


def check_type(name: str | None, model: nn.Module) -> str:
    """The GGUF tensor type to write: ``name`` if supported, else the model's own dtype."""
    if name is None:
        dtype = next(model.parameters()).dtype
        return {torch.bfloat16: "bf16", torch.float16: "f16"}.get(dtype, "f32")
    if name not in GGUF_TYPES:
        raise ConfigError(f"GGUF type {name!r} is not supported; choose one of "
                          f"{', '.join(GGUF_TYPES)}")
    return name


def _adapter(arch: str) -> Any:
    from scratchllm.weights.hf_gpt2 import GPT2_ADAPTER
    from scratchllm.weights.hf_llama import LLAMA_ADAPTER, QWEN3_ADAPTER

    return {"gpt2": GPT2_ADAPTER, "llama": LLAMA_ADAPTER, "qwen3": QWEN3_ADAPTER}[arch]


def permute_for_llama_cpp(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head reordered from halves (0..D/2-1 | D/2..D-1) to interleaved pairs
    (0, D/2, 1, D/2+1, ...), the order llama.cpp's "llama" RoPE rotates."""
    shape = tensor.shape
    return (tensor.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:])
            .swapaxes(1, 2).reshape(shape))


def llama3_rope_factors(config: Any) -> torch.Tensor:
    """Per-frequency divisors llama.cpp applies (``rope_freqs``): plain / scaled frequency,
    from the same functions our model builds its RoPE tables with."""
    from scratchllm.model.rope import rope_inverse_frequencies, scale_llama3_frequencies

    s = config.rope_scaling
    plain = rope_inverse_frequencies(config.head_dim, config.rope_base)
    scaled = scale_llama3_frequencies(plain, s.factor, s.low_freq_factor, s.high_freq_factor,
                                      s.original_context_length)
    return (plain / scaled).float()


def gguf_tensors(model: nn.Module, arch: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(llama.cpp tensor name, float32 CPU tensor in llama.cpp's layout) for every weight."""
    gguf = _gguf()
    c = model.config
    adapter = _adapter(arch)
    names = gguf.get_tensor_name_map(_arch_enum(arch), c.n_layers)
    aliases = tied_aliases(model)
    if arch == "llama" and c.rope_scaling is not None:
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(c)
    for ours, tensor in model.state_dict().items():
        if ours in aliases:  # a tied output head: llama.cpp reuses token_embd by itself
            continue
        hf_name = adapter.ours_to_hf(ours)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError(f"tensor {ours} has no llama.cpp name for architecture {arch}")
        tensor = tensor.detach().to("cpu", torch.float32)
        if arch == "llama" and ".att.W_query." in ours:
            tensor = permute_for_llama_cpp(tensor, c.n_heads)
        elif arch == "llama" and ".att.W_key." in ours:
            tensor = permute_for_llama_cpp(tensor, c.n_kv_groups)
        yield name, tensor
        if arch == "gpt2" and ours.endswith(".att.qkv.weight") and not c.qkv_bias:
            # llama.cpp's gpt2 graph requires the fused bias; without one it is zero.
            yield name.removesuffix(".weight") + ".bias", torch.zeros(tensor.shape[0])


def _arch_enum(arch: str) -> Any:
    gguf = _gguf()
    return {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch]


def _stays_f32(name: str, data: np.ndarray) -> bool:
    return data.ndim <= 1 or name.endswith("_norm.weight") or name.startswith("position_embd")


def _encode(name: str, data: np.ndarray, type_name: str) -> tuple[np.ndarray, Any]:
    """(bytes or array, ggml type) for one tensor, llama.cpp's rules for what stays f32."""
    gguf = _gguf()
    q = gguf.GGMLQuantizationType
    qtype = {"f32": q.F32, "f16": q.F16, "bf16": q.BF16, "q8_0": q.Q8_0}[type_name]
    if qtype == q.F32 or _stays_f32(name, data):
        return data, q.F32
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:  # rows not a multiple of q8_0's 32-value block
        return gguf.quants.quantize(data, q.F16), q.F16


def _file_type(type_name: str) -> int:
    ft = _gguf().LlamaFileType
    return int({"f32": ft.ALL_F32, "f16": ft.MOSTLY_F16, "bf16": ft.MOSTLY_BF16,
                "q8_0": ft.MOSTLY_Q8_0}[type_name])


def _add_hparams(writer: Any, model: nn.Module, arch: str) -> None:
    """The <arch>.* keys llama.cpp reads for this architecture."""
    c = model.config
    writer.add_context_length(c.context_length)
    writer.add_embedding_length(c.emb_dim)
    writer.add_block_count(c.n_layers)
    writer.add_head_count(c.n_heads)
    if arch == "gpt2":
        writer.add_feed_forward_length(model.trf_blocks[0].ff.fc1.out_features)
        writer.add_layer_norm_eps(float(model.trf_blocks[0].norm1.eps))
        return
    writer.add_feed_forward_length(c.hidden_dim)
    writer.add_head_count_kv(c.n_kv_groups)
    writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    writer.add_rope_freq_base(float(c.rope_base))
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    if arch == "llama":
        writer.add_vocab_size(c.vocab_size)
        writer.add_rope_dimension_count(c.head_dim)


def write_gguf(model: nn.Module, tokenizer: Any, path: str | os.PathLike, *,
               type_name: str | None = None, chat_template: str | None = None,
               eot_id: int | None = None, name: str | None = None,
               overwrite: bool = False) -> Path:
    """Write ``model`` + ``tokenizer`` as a GGUF file at ``path`` (atomically); return it.

    ``type_name`` is one of GGUF_TYPES (default: the weights' own dtype); ``chat_template``
    (Jinja) becomes ``tokenizer.chat_template``; ``eot_id`` the end-of-turn token.
    """
    gguf = _gguf()
    from scratchllm import __version__

    arch = gguf_arch(model)
    type_name = check_type(type_name, model)
    target = check_gguf_target(path, overwrite=overwrite)
    if tokenizer is None:
        raise ConfigError("GGUF files carry their tokenizer and this model has none; add the "
                          "tokenizer files it was trained with to the model directory")
    vocab = gguf_vocab(tokenizer, model.config.vocab_size)
    vocab.eot_id = eot_id if eot_id is not None and eot_id != vocab.eos_id else None
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(target)
    tmp = target.with_name(f"{temp_name(target)}{uuid.uuid4().hex[:8]}")
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or target.stem)
        writer.add_string(OWNER_KEY, f"scratchllm {__version__}")
        _add_hparams(writer, model, arch)
        writer.add_file_type(_file_type(type_name))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_vocab(writer, vocab, chat_template)
        for tensor_name, tensor in gguf_tensors(model, arch):
            data, qtype = _encode(tensor_name, tensor.numpy(), type_name)
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        fsync_file(tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return target
