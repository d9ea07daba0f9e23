"""Which layout a CPU model's linear layers take for decoding: one row, or several at once.

This module is the policy; the packed layer itself is ``scratchllm.model.cpu_linear``'s
``PackedLinear``. bf16 layers are packed for any row count (where the CPU has bf16
instructions); float32 layers are laid out by rows per step and by CPU vendor, as below.

Decoding a token reads every weight once; what a step costs then depends on how the CPU
matmul streams the weights for the number of rows it gets. Profiled on GPT-2 124M
(torch.profiler, benchmarks/RESULTS.md "decode, batched"): the linear layers are about 90%
of a decode step at 1 and at 8 rows; attention (reading the KV cache), GELU, norms, argmax
and Python are the rest.

* One row (``generate``, ``chat``), Intel CPUs and any CPU not measured: the weight stored
  transposed, as a contiguous (in, out) matrix (the same values; ``weight`` is a transposed
  view, as a Hugging Face GPT-2's Conv1D weights are). MKL's matrix-vector product streams
  the vocabulary head about 20% faster that way than from the (out, in) rows ``nn.Linear``
  keeps, and no slower elsewhere; oneDNN's packed layout (below) is 1.25x slower for one row.
* One row, AMD CPUs: MKL is Intel's library and takes a slower path on other vendors' CPUs.
  On an AMD EPYC (Zen 5, 2 threads) its GEMV streamed GPT-2 124M's weights at 24 GB/s
  transposed and 19 GB/s from (out, in) rows, where oneDNN's packed layout streamed 36 GB/s:
  a whole decode step ran 1.4x faster packed (62-64 against 44-45 tokens/s), with the same
  greedy tokens. So there one row is packed too (``float32_one_row_packed``): wherever
  ``model.cpu_matmul.matmul_library`` picks oneDNN, which ``SCRATCHLLM_CPU_MATMUL`` overrides.
* Several rows (``serve``'s continuous batching, ``generate_batch``): from a dense weight the
  CPU matmul re-lays the weight out on every call, so 8 rows cost 2.5x one row. Reordered
  once into oneDNN's blocked layout (``PackedLinear``), 8 rows cost 1.6x one transposed row (1 thread, weights
  read from memory as in a real step: the head 16.4 ms against 25.5 ms transposed and
  9.8 ms for one row), and a whole 8-row step 1.6x a one-row step instead of 2.5x. MKL's
  packed sgemm (``torch.ops.mkl._mkl_linear``) did less well (8 rows 1.8x) and runs only the
  row count it was packed for, so it would need the dense copy kept beside it. The packed
  layout runs any number of rows (a prefill, a lone request; one row costs 1.25x the
  transposed layout, hence not used for one row), and a row's result never depends on the
  values of the rows beside it. The batch hint (8, 16, 64) made no measurable difference.

Both are for inference and chosen at load time (``open_model(..., inference_only=True,
decode_rows=N)``), never behind a caller's back: ``generate_batch`` uses a model as it is,
so a model being trained (DDP/FSDP-wrapped, its parameters held by an optimizer) is never
changed. Packing drops the dense weight, except where another module shares it (a tied
head: one more head-sized matrix in memory). ``save_model_dir`` writes the usual contiguous
(out, in) weights from either layout.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.model.cpu_linear import pack_linears
from scratchllm.model.cpu_matmul import matmul_library
from scratchllm.model.inputs import model_device

BF16_ROWS = 1  # bf16 layers are packed for one row whatever ``rows`` is (8 rows cost ~1 row)


def _cpu_float32_linears(model: nn.Module):
    """(parent, name, linear) for every plain CPU float32 ``nn.Linear`` (LoRA layers and
    quantized or packed layers are other types and are left alone)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.device.type == "cpu" \
                    and child.weight.dtype == torch.float32:
                yield parent, name, child


def use_transposed_layout(model: nn.Module) -> int:
    """Store every CPU float32 ``nn.Linear`` weight as a transposed contiguous matrix, in
    place (values, parameters and ties unchanged); returns how many were re-laid."""
    changed = 0
    with torch.no_grad():
        for _, _, linear in _cpu_float32_linears(model):
            weight = linear.weight
            if weight.dim() != 2 or weight.t().is_contiguous():
                continue
            weight.data = weight.data.t().contiguous().t()
            changed += 1
    return changed


def float32_one_row_packed() -> bool:
    """True where one float32 row decodes faster from oneDNN's packed layout than from MKL's
    transposed GEMV: where ``matmul_library()`` picks oneDNN (AMD CPUs, see the module
    docstring) and the packed ops run here."""
    from scratchllm.model.cpu_linear import packed_unavailable

    return matmul_library() == "onednn" and packed_unavailable(torch.float32) is None


def check_decode_rows(rows: int) -> int:
    """Refuse a row count that is not a positive integer (before any weight is read)."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ConfigError(f"decode rows (the batch width to lay the weights out for) must be "
                          f"an integer >= 1, got {rows!r}")
    return rows


def prepare_decoding(model: nn.Module, rows: int = 1, *, compile: bool = False) -> int:
    """Lay out ``model``'s CPU bf16 and float32 linear layers for decoding ``rows`` rows per
    step (see the module docstring); returns how many layers changed. Call it once, on a
    model used only for inference, before decoding: ``open_model(inference_only=True)`` does,
    and so do the benchmarks, to time what the commands run.

    ``compile=True`` (one row only) also compiles the one-token decode step with inductor
    (``scratchllm.model.compiled_decode``), paying the compile now rather than mid-answer."""
    check_decode_rows(rows)
    if compile:
        from scratchllm.model.compiled_decode import check_compile

        check_compile(model_device(model), rows)
    changed = pack_linears(model, torch.bfloat16, BF16_ROWS)
    if rows == 1 and not float32_one_row_packed():
        changed += use_transposed_layout(model)
    else:
        changed += pack_linears(model, torch.float32, rows)
    if compile:
        from scratchllm.model.compiled_decode import compile_decoding

        compile_decoding(model)
    return changed


__all__ = ["BF16_ROWS", "check_decode_rows", "float32_one_row_packed",
           "prepare_decoding", "use_transposed_layout"]
