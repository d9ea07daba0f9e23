"""Build a model without allocating or initialising its parameters.

Loading a checkpoint into a freshly initialised model pays twice: once for random numbers
that are immediately overwritten, and once more in memory. Under ``empty_weights()`` every
parameter is moved to PyTorch's "meta" device (shape and dtype only, no storage) as it is
registered, while buffers such as RoPE's cos/sin tables stay real, because checkpoints do not
hold them. ``load_state_dict(..., assign=True)`` then installs the loaded tensors as they are.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def empty_weights() -> Iterator[None]:
    """Within this block, new modules get storage-less (meta) parameters; buffers stay real."""
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            meta = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            module._parameters[name] = meta

    # Initialising a meta tensor does nothing useful, yet torch routes it through code that
    # imports torch._dynamo (about 2 s of CPU per process); skip the nn.init fill functions.
    skipped = {name: fn for name, fn in vars(nn.init).items()
               if name.endswith("_") and not name.startswith("_") and callable(fn)}
    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    for name in skipped:
        setattr(nn.init, name, _leave_as_is)
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]
        for name, fn in skipped.items():
            setattr(nn.init, name, fn)


def _leave_as_is(tensor, *args, **kwargs):
    """Stand-in for ``nn.init.*_`` under ``empty_weights``: the tensor is replaced on loading."""
    return tensor


def meta_tensor_names(model: nn.Module) -> list[str]:
    """Parameters/buffers still without data (i.e. not filled by the checkpoint)."""
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()]
            if t.device.type == "meta"]


def retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """After ``assign=True`` replaced a shared parameter, point each alias at its source again."""
    for alias, source in aliases.items():
        owner, _, attr = alias.rpartition(".")
        setattr(model.get_submodule(owner), attr, model.get_parameter(source))
