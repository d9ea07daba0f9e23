"""How a CPU float32 model's linear layers are laid out for decoding: one row, or several at once.

Decoding a token reads every weight once; what a step costs then depends on how the CPU
matmul streams the weights for the number of rows it gets. Profiled on GPT-2 124M
(torch.profiler, benchmarks/RESULTS.md "decode, batched"): the linear layers are about 90%
of a decode step at 1 and at 8 rows; attention (reading the KV cache), GELU, norms, argmax
and Python are the rest.

* One row (``generate``, ``chat``): the weight stored transposed, as a contiguous (in, out)
  matrix (the same values; ``weight`` is a transposed view, as a Hugging Face GPT-2's
  Conv1D weights are). MKL's matrix-vector product streams the vocabulary head about 20%
  faster that way than from the (out, in) rows ``nn.Linear`` keeps, and no slower elsewhere.
* Several rows (``serve``'s continuous batching, ``generate_batch``): from a dense weight the
  CPU matmul re-lays the weight out on every call, so 8 rows cost 2.5x one row. Reordered
  once into oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, then
  ``_linear_pointwise`` per call), 8 rows cost 1.6x one transposed row (1 thread, weights
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

import functools

import torch
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.model.lora import LoRALinear


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


@functools.cache
def packed_fp32_unavailable() -> str | None:
    """Why oneDNN's prepacked float32 linear cannot run here, or None when it can."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):  # measured on x86 only; elsewhere keep dense
        return (f"packed float32 layers are used on x86 CPUs with AVX2 or AVX-512 only (where "
                f"they were measured); this CPU reports {capability}")
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None \
            or not hasattr(ops, "_reorder_linear_weight") or not hasattr(ops, "_linear_pointwise"):
        return f"this PyTorch build ({torch.__version__}) has no oneDNN prepacked linear ops"
    try:  # present is not enough: a build may still refuse them at run time
        packed = ops._reorder_linear_weight(torch.ones(4, 4), 2)
        out = ops._linear_pointwise(torch.ones(2, 4), packed, None, "none", [], "")
        if out.tolist() != [[4.0] * 4] * 2:
            return "oneDNN's prepacked linear gave a wrong result on this machine"
    except RuntimeError as err:
        return f"oneDNN's prepacked linear failed here ({str(err).splitlines()[0][:80]})"
    return None


class PackedFp32Linear(nn.Module):
    """``y = x W^T + b`` in float32 on the CPU, ``W`` in oneDNN's blocked layout for ``rows``.

    The dense weight is kept (the same ``Parameter``) only when another module shares it,
    as a tied head shares the token embedding's; otherwise the model holds one copy, packed.
    """

    kind = "float32, prepacked for oneDNN"  # what ``cpu_linear.describe_linears`` calls it

    def __init__(self, linear: nn.Linear, rows: int, *, shared: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rows = (linear.in_features,
                                                          linear.out_features, rows)
        self._packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
        self.weight = linear.weight if shared else None
        self.bias = None
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise ConfigError(
                "this model's linear layers are packed for batched float32 inference on the "
                "CPU and cannot be trained; open the model without inference_only=True to "
                "train or fine-tune it")
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, rows={self.rows}, tied={self.weight is not None}")

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        """The dense (out, in) weight, as ``nn.Linear`` would write it."""
        if self.weight is None:
            destination[prefix + "weight"] = self._packed.to_dense()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        raise ConfigError("cannot load weights into a model packed for batched inference; "
                          "load them into the model first, then pack it (open_model does both)")

    def _apply(self, fn, recurse: bool = True):
        probe = fn(torch.zeros(1))
        if probe.dtype != torch.float32 or probe.device.type != "cpu":
            raise ConfigError(
                f"this model's linear layers are packed for float32 on the CPU and cannot move "
                f"to {probe.dtype} / {probe.device}; open the model again with the dtype and "
                "device you want")
        return super()._apply(fn, recurse)


def pack_fp32_linears(model: nn.Module, rows: int) -> int:
    """Swap every CPU float32 ``nn.Linear`` for a ``PackedFp32Linear`` laid out for ``rows``,
    in place, and put the model in eval mode; returns how many were packed (0 when oneDNN's
    ops are unavailable here)."""
    if packed_fp32_unavailable() is not None:
        return 0
    uses: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
    count = 0
    for parent, name, linear in _cpu_float32_linears(model):
        if isinstance(parent, LoRALinear):  # unmerged LoRA reads and merges into base.weight
            continue
        setattr(parent, name, PackedFp32Linear(linear, rows,
                                               shared=uses[id(linear.weight)] > 1))
        count += 1
    model.eval()
    return count


def check_decode_rows(rows: int) -> int:
    """Refuse a row count that is not a positive integer (before any weight is read)."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ConfigError(f"decode rows (the batch width to lay the weights out for) must be "
                          f"an integer >= 1, got {rows!r}")
    return rows


def prepare_decoding(model: nn.Module, rows: int = 1) -> int:
    """Lay out ``model``'s CPU float32 linear layers for decoding ``rows`` rows per step (see
    the module docstring); returns how many layers changed. Call it once, on a model opened
    for inference, before decoding: ``open_model(inference_only=True)`` does."""
    if check_decode_rows(rows) == 1:
        return use_transposed_layout(model)
    return pack_fp32_linears(model, rows)


__all__ = ["PackedFp32Linear", "check_decode_rows", "pack_fp32_linears", "packed_fp32_unavailable",
           "prepare_decoding", "use_transposed_layout"]
