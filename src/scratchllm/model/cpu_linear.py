"""bf16 linear layers prepacked for oneDNN, so CPU bf16 decoding runs on AMX / AVX512-BF16.

Why: a bf16 ``F.linear`` on the CPU goes through a generic matmul that re-lays the weight
out on every call, so on an AMX CPU it ran barely faster than float32 (GPT-2 124M's shape,
batch 1, 2 threads: the 768x2304 projection 120 us against float32's 124 us; the
768x50257 head 3.0 ms against 4.7 ms). oneDNN's linear with the weight reordered *once*
into its blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, then
``torch.ops.mkldnn._linear_pointwise`` per call) took 58 us and 1.7 ms, and 8 rows cost
about what one does. ``PackedBf16Linear`` holds that packed weight in place of
``nn.Linear``; the arithmetic (bf16 products summed in float32, rounded to bf16) is
oneDNN's either way, and its outputs matched ``F.linear``'s bit for bit in our tests.

Why a module and not ``torch.compile`` with ``freezing``: inductor lowers a frozen bf16
Linear on the CPU to these same two ops, so the matmuls would be the same. Tried on GPT-2
124M's decoding (1 thread, busy machine): 204 s of compiling before the 20th token, then
0.96x plain bf16's tokens/s, because the KV cache object breaks the graph at every block
and the per-block recompiles hit dynamo's limit, so most steps ran uncompiled. Swapping
the layers takes well under a second, needs no C++ compiler and works in every mode.

The ops are private, so ``packed_bf16_unavailable`` checks (and tries) them first; where
they are missing, or the CPU has no bf16 instructions, the layers stay plain ``nn.Linear``
and ``scratchllm.model.quantize.bf16_note`` tells the user. Packed layers are for
inference only: a training forward raises, ``state_dict`` still writes dense weights (so a
packed model saves like any other), loading into one and converting it to another dtype or
device are refused. A head tied to the token embedding keeps the shared weight for the
embedding's lookups and adds a packed copy (one more head-sized bf16 matrix in memory).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from scratchllm.errors import ConfigError

BATCH_HINT = 1  # the layout is tuned for decoding's one row; any number of rows works


def packed_bf16_unavailable() -> str | None:
    """Why prepacked bf16 linear layers cannot run here, or None when they can."""
    from scratchllm.model.quantize import cpu_has_bf16

    if not cpu_has_bf16():
        return "this CPU has no bf16 instructions (avx512_bf16/AMX)"
    return _ops_unavailable()


@functools.cache
def _ops_unavailable() -> str | None:
    """The oneDNN ops' check, tried once per process (the CPU check above is not cached)."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None \
            or not hasattr(ops, "_reorder_linear_weight") or not hasattr(ops, "_linear_pointwise"):
        return f"this PyTorch build ({torch.__version__}) has no oneDNN prepacked linear ops"
    try:  # present is not enough: a build may still refuse them at run time
        weight = torch.ones(4, 4, dtype=torch.bfloat16)
        packed = ops._reorder_linear_weight(weight, BATCH_HINT)
        out = ops._linear_pointwise(torch.ones(1, 4, dtype=torch.bfloat16), packed, None,
                                    "none", [], "")
        if out.tolist() != [[4.0] * 4]:
            return "oneDNN's prepacked linear gave a wrong result on this machine"
    except RuntimeError as err:
        return f"oneDNN's prepacked linear failed here ({str(err).splitlines()[0][:80]})"
    return None


class PackedBf16Linear(nn.Module):
    """``y = x W^T + b`` for bf16 ``x`` on the CPU, with ``W`` in oneDNN's blocked layout.

    ``weight`` is kept (as the same ``Parameter``) only when another module shares it, as a
    tied head shares the token embedding's; otherwise the dense weight is dropped after
    packing, so the model holds one copy of it.
    """

    kind = "bfloat16, prepacked for oneDNN"  # what ``describe_linears`` calls it

    def __init__(self, linear: nn.Linear, *, shared: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, BATCH_HINT)
        self.weight = linear.weight if shared else None
        self.bias = None
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise ConfigError(
                "this model's linear layers are packed for bf16 inference on the CPU and cannot "
                "be trained; open the model without inference_only=True to train or fine-tune it")
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, tied={self.weight is not None}")

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        """The dense weight, as ``nn.Linear`` would write it (unpacked on the fly)."""
        if self.weight is None:
            destination[prefix + "weight"] = self._packed.to_dense()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        raise ConfigError("cannot load weights into a model packed for bf16 inference; load "
                          "them into the model first, then pack it (open_model does both)")

    def _apply(self, fn, recurse: bool = True):
        probe = fn(torch.zeros(1, dtype=torch.bfloat16))
        if probe.dtype != torch.bfloat16 or probe.device.type != "cpu":
            raise ConfigError(
                f"this model's linear layers are packed for bf16 on the CPU and cannot move to "
                f"{probe.dtype} / {probe.device}; open the model again with the dtype and "
                "device you want")
        return super()._apply(fn, recurse)


def pack_bf16_linears(model: nn.Module) -> int:
    """Swap every CPU bf16 ``nn.Linear`` of ``model`` for a ``PackedBf16Linear``, in place,
    and put the model in eval mode; returns how many were packed (0 when the ops are
    unavailable here, see ``packed_bf16_unavailable``, or no layer is CPU bf16)."""
    from scratchllm.model.lora import LoRALinear

    if packed_bf16_unavailable() is not None:
        return 0
    uses: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
    count = 0
    for parent in list(model.modules()):
        if isinstance(parent, LoRALinear):  # adapters kept unmerged are there to be trained
            continue
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child.weight.dtype != torch.bfloat16 \
                    or child.weight.device.type != "cpu":
                continue
            setattr(parent, name, PackedBf16Linear(child, shared=uses[id(child.weight)] > 1))
            count += 1
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


__all__ = ["PackedBf16Linear", "describe_linears", "pack_bf16_linears",
           "packed_bf16_unavailable"]
