"""int8 weights for generation, and what bf16 does on this CPU.

Decoding one token reads every weight once, so its speed is set by bytes per token: int8
weights move a quarter of float32's. Which kernel does it best was measured on GPT-2 124M's
shape (batch 1, greedy; benchmarks/decode.py and RESULTS.md): on the CPU, PyTorch's dynamic
int8 matmul (fbgemm, VNNI where the CPU has it) decodes about 2.5x float32's tokens/s;
torchao 0.18's int8 weight-only layout ran at 0.4x float32 there,
and its dynamic int8 x int8 at 0.6x fbgemm's speed. On CUDA, torchao's int8 weight-only
layout is the one that pays, so that is used when torchao is installed.

Every ``nn.Linear`` is quantized, the output head included (it is the largest matrix:
vocab x emb_dim; GPT-2's head shares the token embedding's weight, and the embedding keeps
its float copy). Embeddings, norms, the KV cache and sampling stay in floating point.

On the CPU each activation row gets its own int8 scale (``scratchllm.model.int8_linear``), so
the rows of a batch never affect each other in ``serve`` and ``generate_batch``. A lone decode
step goes to the kernel as it is (its own [min, max] grid: the fastest path), so a prompt
decoded alone and inside a batch can differ in the last bits, and the tests check that greedy
decoding picks the same tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.model.inputs import model_device

QUANTIZE_MODES = ("int8",)


def cpu_flags() -> dict[str, bool]:
    """The instruction sets that decide what bf16 and int8 cost on this CPU."""
    def probe(name: str) -> bool:
        check = getattr(torch.cpu, name, None)
        try:
            return bool(check()) if check is not None else False
        except Exception:  # an old or unusual build: treat as absent
            return False

    return {"avx2": probe("_is_avx2_supported"), "avx512_vnni": probe("_is_vnni_supported"),
            "avx512_bf16": probe("_is_avx512_bf16_supported"),
            "amx": probe("_is_amx_tile_supported")}


def cpu_has_bf16() -> bool:
    """True when bf16 matmuls run on bf16 instructions (AVX512-BF16 or AMX), not converted."""
    flags = cpu_flags()
    return flags["avx512_bf16"] or flags["amx"]


def bf16_note(dtype: torch.dtype | str | None, device: torch.device | str | None) -> str | None:
    """A one-line explanation when bf16 weights on this CPU buy memory but no speed."""
    if as_dtype(dtype) != torch.bfloat16 or torch.device(device or "cpu").type != "cpu":
        return None
    if cpu_has_bf16():
        from scratchllm.model.cpu_linear import packed_unavailable

        missing = packed_unavailable(torch.bfloat16)
        return None if missing is None else (
            f"note: {missing}, so bf16 linear layers run through PyTorch's plain matmul: "
            "half the memory, but little faster than --dtype fp32; --quantize int8 is faster")
    return ("note: this CPU has no bf16 instructions (avx512_bf16/AMX): bf16 weights halve "
            "memory, but each matmul converts them to float32, so decoding is no faster than "
            "--dtype fp32 and less exact; --quantize int8 is the faster choice here")


def check_quantize(quantize: str | None, dtype: torch.dtype | str | None = None,
                   device: torch.device | str | None = None) -> str | None:
    """Refuse a bad combination before any weights are read; return the mode (or None)."""
    if quantize is None:
        return None
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(f"unknown quantization {quantize!r}; use one of {QUANTIZE_MODES}")
    kind = torch.device(device or "cpu").type
    wanted = as_dtype(dtype)
    if kind == "cpu":
        if wanted not in (None, torch.float32):
            raise ConfigError(f"--quantize int8 on the CPU runs int8 kernels on float32 "
                              f"activations, so it cannot be combined with dtype {wanted}; "
                              "drop --dtype (or drop --quantize)")
        if torch.backends.quantized.engine == "none":
            raise ConfigError("this PyTorch build has no quantized CPU engine (fbgemm/onednn/"
                              "qnnpack); run without --quantize")
    elif kind == "cuda":
        _torchao()
    else:
        raise ConfigError(f"--quantize int8 runs on the CPU or CUDA, not {kind}; use "
                          "--device cpu, or --dtype bf16 / fp16 on this device")
    return quantize


def quantize_model(model: nn.Module, quantize: str | None = "int8") -> nn.Module:
    """Quantize every ``nn.Linear`` of ``model`` to int8 in place, for generation only.

    The model is put in eval mode, and any forward pass that could train it (training mode
    with gradients on) raises a clear error: int8 weights have no gradients.
    """
    if check_quantize(quantize) is None:
        return model
    device = model_device(model)
    check_quantize(quantize, None, device)
    model.eval()
    if device.type == "cuda":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig())
    else:
        model.float()  # the kernels take float32 activations (a bf16-saved model is upcast)
        from scratchllm.model.int8_linear import swap_linears

        swap_linears(model)  # fbgemm int8, one scale per weight row and per activation row
    model.quantization = quantize
    model.register_forward_pre_hook(_refuse_training)
    return model


def _refuse_training(module: nn.Module, _args) -> None:
    if module.training and torch.is_grad_enabled():
        raise ConfigError(
            f"this model's linear layers hold {module.quantization} weights, which cannot be "
            "trained; train or fine-tune the unquantized model and quantize it for generation")


def _torchao():
    try:
        import torchao  # noqa: F401
    except ImportError as err:
        raise ConfigError("--quantize int8 on CUDA needs torchao (pip install torchao); "
                          "without it use --dtype bf16, or --device cpu") from err
    return torchao


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype or its name ("bfloat16"); None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if value not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ConfigError(f"unsupported dtype {dtype!r}; use float32, bfloat16 or float16")
    return value


__all__ = ["QUANTIZE_MODES", "as_dtype", "bf16_note", "check_quantize", "cpu_flags", "cpu_has_bf16",
           "quantize_model"]
