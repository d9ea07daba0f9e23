"""Build a model without allocating or initialising its parameters.

Loading a checkpoint into a freshly initialised model pays twice: once for random numbers
that are immediately overwritten, and once more in memory. Under ``empty_weights()`` every
parameter is moved to PyTorch's "meta" device (shape and dtype only, no storage) as it is
registered, while buffers such as RoPE's cos/sin tables stay real, because checkpoints do not
hold them. ``load_state_dict(..., assign=True)`` then installs the loaded tensors as they are.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from scratchllm.errors import CheckpointError


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


def check_config_fits(config: Any, stored: int, config_file: Path, weights: str) -> None:
    """Refuse a config that needs far more parameters than the weight files hold, before the
    model is built: ``empty_weights`` moves each parameter to "meta" only after its module
    allocated it, so a damaged width (an ``emb_dim`` of 40,000) would first ask for tens of
    GB. Small shortfalls (a missing tensor, an untied head) are named precisely later."""
    from scratchllm.model.stats import count_parameters

    try:
        needed = count_parameters(config)
    except (TypeError, ValueError, AttributeError):
        return  # a config the counter does not know: the shape checks still run later
    if needed > 2 * stored:
        raise CheckpointError(f"{config_file} describes a model of {needed:,} parameters but "
                              f"{weights} hold(s) {stored:,} values: one does not belong to the "
                              "other (damaged or mismatched); download or save them again")
