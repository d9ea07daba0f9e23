"""Linear layers whose weight oneDNN reordered once, for CPU inference in bf16 or float32.

Why: a CPU ``F.linear`` from a dense weight goes through a generic matmul that re-lays the
weight out on every call. oneDNN's linear with the weight reordered *once* into its blocked
layout (``torch.ops.mkldnn._reorder_linear_weight``, then ``torch.ops.mkldnn._linear_pointwise``
per call) skips that, and a row's result never depends on the rows beside it:

* bf16 (GPT-2 124M's shape, batch 1, 2 threads, AMX CPU): the 768x2304 projection 58 us
  against plain bf16's 120 us (float32: 124 us), the 768x50257 head 1.7 ms against 3.0 ms
  (float32: 4.7 ms), and 8 rows cost about what one does. Outputs matched plain bf16
  ``F.linear``'s bit for bit in our tests (bf16 products summed in float32 either way).
* float32, several rows: 8 rows cost 1.6x one row instead of 2.5x (the policy of when to use
  it is ``scratchllm.model.decode_layout``'s; one row is faster transposed).

Why a module and not ``torch.compile`` with ``freezing``: inductor lowers a frozen CPU Linear
to these same two ops, so the matmuls would be the same. Tried on GPT-2 124M's bf16 decoding
(1 thread, busy machine): 204 s of compiling before the 20th token, then 0.96x plain bf16's
tokens/s (the KV cache object breaks the graph at every block; the per-block recompiles hit
dynamo's limit). Swapping the layers takes well under a second and needs no C++ compiler.

The ops are private, so ``packed_unavailable(dtype)`` checks (and tries) them first, with the
CPU features each dtype was measured on; where it says no, layers stay plain ``nn.Linear``
(``scratchllm.model.quantize.bf16_note`` tells a bf16 user why). ``PackedLinear`` is for
inference only: a training forward raises, ``state_dict`` still writes the dense (out, in)
weight (a packed model saves like any other), loading into one and converting it to another
dtype or device are refused. A head tied to the token embedding keeps the shared weight for
the embedding's lookups and adds a packed copy (one more head-sized matrix in memory).
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from scratchllm.errors import ConfigError

PACKABLE = (torch.bfloat16, torch.float32)


def packed_unavailable(dtype: torch.dtype) -> str | None:
    """Why ``PackedLinear`` cannot run ``dtype`` here, or None when it can."""
    return _cpu_unavailable(dtype) or _ops_unavailable(dtype)


def _cpu_unavailable(dtype: torch.dtype) -> str | None:
    """The CPU features each dtype was measured on (not cached: tests fake the flags)."""
    if dtype == torch.bfloat16:
        from scratchllm.model.quantize import cpu_has_bf16

        return None if cpu_has_bf16() else "this CPU has no bf16 instructions (avx512_bf16/AMX)"
    if dtype == torch.float32:
        capability = torch.backends.cpu.get_cpu_capability()
        if capability not in ("AVX2", "AVX512"):  # measured on x86 only; elsewhere keep dense
            return (f"packed float32 layers are used on x86 CPUs with AVX2 or AVX-512 only "
                    f"(where they were measured); this CPU reports {capability}")
        return None
    return f"linear layers are packed for {_name(PACKABLE)} only, not {_name((dtype,))}"


@functools.cache
def _ops_unavailable(dtype: torch.dtype) -> str | None:
    """oneDNN's ops for ``dtype``, tried once per process."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None \
            or not hasattr(ops, "_reorder_linear_weight") or not hasattr(ops, "_linear_pointwise"):
        return f"this PyTorch build ({torch.__version__}) has no oneDNN prepacked linear ops"
    try:  # present is not enough: a build may still refuse them at run time
        packed = ops._reorder_linear_weight(torch.ones(4, 4, dtype=dtype), 2)
        out = ops._linear_pointwise(torch.ones(2, 4, dtype=dtype), packed, None, "none", [], "")
        if out.tolist() != [[4.0] * 4] * 2:
            return "oneDNN's prepacked linear gave a wrong result on this machine"
    except RuntimeError as err:
        return f"oneDNN's prepacked linear failed here ({str(err).splitlines()[0][:80]})"
    return None


def _name(dtypes) -> str:
    return " and ".join(str(d).removeprefix("torch.") for d in dtypes)


class PackedLinear(nn.Module):
    """``y = x W^T + b`` on the CPU, ``W`` in oneDNN's blocked layout for ``rows`` rows per
    call (a hint: any number of rows runs), in the linear layer's dtype.

    ``weight`` is kept (as the same ``Parameter``) only when another module shares it, as a
    tied head shares the token embedding's; otherwise the dense weight is dropped after
    packing, so the model holds one copy of it.
    """

    def __init__(self, linear: nn.Linear, rows: int = 1, *, shared: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rows, self.dtype = rows, linear.weight.dtype
        self.kind = f"{_name((self.dtype,))}, prepacked for oneDNN"  # for describe_linears
        self._packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
        self.weight = linear.weight if shared else None
        self.bias = None
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)

    handle: int | None = None  # set by ``linear_op.register`` when a compiled model uses it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.handle is not None and torch.compiler.is_compiling():
            # inside torch.compile: one opaque operator (dynamo cannot trace MKLDNN tensors)
            from scratchllm.model.linear_op import opaque_linear

            return opaque_linear(x, self.handle, self.out_features)
        return self.eager_forward(x)

    def eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's computation (``forward`` outside ``torch.compile``)."""
        if self.training and torch.is_grad_enabled():
            raise ConfigError(
                f"this model's linear layers are packed for {_name((self.dtype,))} inference "
                "on the CPU and cannot be trained; open the model without inference_only=True "
                "to train or fine-tune it")
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.dtype}, rows={self.rows}, "
                f"tied={self.weight is not None}")

    def __deepcopy__(self, memo: dict) -> "PackedLinear":
        """A copy with its own packed weight (an opaque oneDNN tensor has no storage for
        ``deepcopy`` to copy, but clones); it is not the registered layer, so no handle."""
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        state = {k: v for k, v in self.__dict__.items() if k not in ("_packed", "handle")}
        clone.__dict__.update(copy.deepcopy(state, memo))
        clone._packed = self._packed.clone()
        return clone

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        """The dense (out, in) weight, as ``nn.Linear`` would write it (unpacked on the fly)."""
        if self.weight is None:
            destination[prefix + "weight"] = self._packed.to_dense()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        raise ConfigError("cannot load weights into a model packed for inference; load them "
                          "into the model first, then pack it (open_model does both)")

    def _apply(self, fn, recurse: bool = True):
        probe = fn(torch.zeros(1, dtype=self.dtype))
        if probe.dtype != self.dtype or probe.device.type != "cpu":
            raise ConfigError(
                f"this model's linear layers are packed for {self.dtype} on the CPU and cannot "
                f"move to {probe.dtype} / {probe.device}; open the model again with the dtype "
                "and device you want")
        return super()._apply(fn, recurse)


def pack_linears(model: nn.Module, dtype: torch.dtype, rows: int = 1) -> int:
    """Swap every plain CPU ``nn.Linear`` of ``dtype`` in ``model`` for a ``PackedLinear``
    laid out for ``rows``, in place, and put the model in eval mode when any was; returns how
    many (0 where ``packed_unavailable(dtype)`` says why not). LoRA layers kept unmerged stay
    plain: they are there to be trained, and LoRA reads and merges into ``base.weight``."""
    from scratchllm.model.lora import LoRALinear

    if packed_unavailable(dtype) is not None:
        return 0
    uses: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
    count = 0
    for parent in list(model.modules()):
        if isinstance(parent, LoRALinear):
            continue
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child.weight.dtype != dtype \
                    or child.weight.device.type != "cpu":
                continue
            setattr(parent, name, PackedLinear(child, rows, shared=uses[id(child.weight)] > 1))
            count += 1
    if count:
        model.eval()
    return count


def describe_linears(model: nn.Module) -> str:
    """What the model's linear layers run on, for ``generate --stats``: a dtype for plain
    ``nn.Linear``, else the layer's ``kind`` (or its class name)."""
    kinds: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            kind = str(module.weight.dtype).removeprefix("torch.")
        elif not (hasattr(module, "in_features") and hasattr(module, "out_features")):
            continue
        elif type(module).__module__.startswith("torch.ao.nn.quantized"):
            kind = "int8"
        elif next(module.children(), None) is None:  # a leaf: a LoRA wrapper counts once
            kind = getattr(module, "kind", type(module).__name__)
        else:
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in kinds.items()) or "none"


__all__ = ["PACKABLE", "PackedLinear", "describe_linears", "pack_linears", "packed_unavailable"]
