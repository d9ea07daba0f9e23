"""Our CPU inference linear layers as one opaque operator, so ``torch.compile`` keeps them
inside its graph.

Dynamo cannot trace fbgemm's int8 call (a pybind function taking a ``torch.ScriptObject``)
nor oneDNN's prepacked linear (an opaque MKLDNN tensor): without help every such layer would
break a compiled decode step into pieces (GPT-2 int8: 49 breaks, 50 graphs).
``scratchllm::linear(x, handle, out_features)`` is a plain operator whose CPU kernel looks
the layer up by ``handle`` and runs its eager forward; its fake kernel only gives the
output's shape. It is registered with ``torch.library.Library`` rather than
``torch.library.custom_op``: on a decode row the dispatch costs ~2.5 us more than the layer
called directly, where ``custom_op``'s wrapper cost ~6 (RESULTS.md, "decode, compiled"), and
49 calls run per GPT-2 token.

Handles are handed out by ``register`` (``scratchllm.model.compiled_decode`` does it when it
compiles a model) and hold the layer weakly, so a registered model is still freed.
"""

from __future__ import annotations

import itertools
import weakref

import torch
from torch import nn

_LAYERS: dict[int, weakref.ref] = {}
_NEXT = itertools.count()

_LIB = torch.library.Library("scratchllm", "FRAGMENT")
_LIB.define("linear(Tensor x, int handle, int out_features) -> Tensor")


def _run(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    layer = _LAYERS[handle]()
    if layer is None:
        raise RuntimeError(f"linear layer {handle} no longer exists (compiled with a freed model?)")
    return layer.eager_forward(x)


def _shape_only(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


_LIB.impl("linear", _run, "CPU")
torch.library.register_fake("scratchllm::linear", _shape_only, lib=_LIB)

opaque_linear = torch.ops.scratchllm.linear.default


def register(layer: nn.Module) -> int:
    """A handle for ``layer`` (it needs ``eager_forward`` and ``out_features``), kept on it
    as ``layer.handle``; a layer already registered keeps its handle."""
    handle = getattr(layer, "handle", None)
    if handle is None or _LAYERS.get(handle, lambda: None)() is not layer:
        handle = next(_NEXT)
        _LAYERS[handle] = weakref.ref(layer, lambda _ref, h=handle: _LAYERS.pop(h, None))
        layer.handle = handle
    return handle


__all__ = ["opaque_linear", "register"]
