"""Multi-process training under ``torchrun``: DDP, or FSDP for models too big for one GPU.

One process per device; ``torchrun`` starts them and sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT. ``DistributedContext`` reads that environment, joins the process
group (NCCL between CUDA GPUs, Gloo on CPUs) and offers the few collective operations the
Trainer needs. Without torchrun it is an inert single-process context whose methods return
at once, so a one-process run does exactly what it did before.

The engines are PyTorch's own: ``DistributedDataParallel`` averages gradients across ranks
during ``backward()``; FSDP (``fully_shard``) also shards weights, gradients and optimizer state,
gathering each block's weights only while it computes. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError
from scratchllm.weights.model_dir import tied_aliases
from scratchllm.train.state import TrainingState, load_checkpoint

MODES = ("auto", "ddp", "fsdp", "none")
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass
class DistributedContext:
    """Who this process is in the job; ``world_size == 1`` means a plain single-process run."""

    mode: str = "none"          # "ddp", "fsdp" or "none" (resolved, never "auto")
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False    # True if we created the process group (so we destroy it)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes metrics, plots, checkpoints and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here (e.g. while rank 0 writes a checkpoint)."""
        if self.enabled:
            torch.distributed.barrier()

    def all_reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64, so sums stay exact-ish)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor.tolist()

    def all_reduce_mean(self, value: float, device: torch.device) -> float:
        """Mean of one number (a logged loss) over all ranks."""
        if not self.enabled:
            return value
        return self.all_reduce_sum([value], device)[0] / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is True on any (a Ctrl-C seen by one rank stops all)."""
        if not self.enabled:
            return flag
        return self.all_reduce_sum([float(flag)], device)[0] > 0

    def destroy(self, *, finished: bool = False) -> None:
        """Leave the process group cleanly (torchrun otherwise warns about leaked groups).

        ``finished`` (every rank got to the end of the run): wait for all ranks first, so no
        rank tears its connections down while another's Gloo threads may still talk to it.
        Without it, about 1 in 30 two-process CPU runs ended with a rank aborting at exit
        ("terminate called without an active exception", SIGABRT) after the run was saved;
        this is the likely cause, not a proven one. After an error no rank waits: the others
        may be stuck in a collective, and torchrun stops them."""
        if self.owns_group and torch.distributed.is_initialized():
            if finished:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        self.owns_group = False


def _env_int(name: str) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer; launch "
                          "with torchrun, which sets it") from None


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``ddp`` when torchrun started more than one process, else ``none``."""
    if mode not in MODES:
        raise ConfigError(f"distributed must be one of {', '.join(MODES)}, got {mode!r}")
    launched = all(name in os.environ for name in _TORCHRUN_VARS)
    world = _env_int("WORLD_SIZE") if launched else 1
    if mode == "auto":
        return "ddp" if world > 1 else "none"
    if mode == "none" and world > 1:
        raise ConfigError(f"distributed is 'none' but torchrun started {world} processes, "
                          "which would each train and write the same run; use "
                          "--distributed ddp/fsdp/auto, or run without torchrun")
    if mode in ("ddp", "fsdp") and not launched:
        raise ConfigError(f"distributed {mode!r} needs the RANK/LOCAL_RANK/WORLD_SIZE variables "
                          "that torchrun sets; launch with `torchrun --nproc_per_node=N -m "
                          "scratchllm pretrain ...`, or use --distributed auto")
    return mode


def setup_distributed(mode: str, device: torch.device) -> tuple[DistributedContext, torch.device]:
    """Join the torchrun job (if any) and return (context, this rank's device).

    On CUDA each process takes GPU ``LOCAL_RANK`` and talks NCCL; elsewhere Gloo.
    """
    mode = resolve_mode(mode)
    if mode == "none":
        return DistributedContext(), device
    rank, local_rank, world = (_env_int(name) for name in _TORCHRUN_VARS)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not torch.distributed.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.distributed.init_process_group("nccl", device_id=device)
        else:
            torch.distributed.init_process_group("gloo")
    return DistributedContext(mode, rank, local_rank, world, owns), device


# ---------------------------------------------------------------------------- wrapping the model
def wrap_model(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DDP: a wrapper that all-reduces gradients. FSDP: shard each transformer block, then the
    rest (embeddings, final norm and head stay together, so tied weights share one unit).

    FSDP changes ``model`` in place (its parameters become sharded DTensors), so build the
    optimizer after calling this. Returns the module to call forward on.
    """
    if ctx.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if ctx.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "trf_blocks", []):
            fully_shard(block)
        fully_shard(model)
        return model
    return model


def no_sync_factory(wrapped: nn.Module, ctx: DistributedContext) -> Callable[[], ContextManager] | None:
    """A context that skips the gradient all-reduce of a micro batch (all but the last one
    of gradient accumulation), so each optimizer step communicates once."""
    if ctx.mode == "ddp":
        return wrapped.no_sync
    if ctx.mode == "fsdp":
        @contextlib.contextmanager
        def fsdp_no_sync():
            wrapped.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                wrapped.set_requires_gradient_sync(True)
        return fsdp_no_sync
    return None


# ---------------------------------------------------------------------------- checkpoints
def savable(model: nn.Module, optimizer, ctx: DistributedContext,
            model_class: type[nn.Module]) -> tuple[nn.Module, Any] | None:
    """(model, optimizer) for ``save_checkpoint`` on rank 0; None on the other ranks.

    DDP ranks hold identical full copies, so rank 0 saves its own. FSDP first gathers the full
    weights and optimizer state onto rank 0's CPU (a collective: every rank must call this),
    so the checkpoint has the same files and tensors as a single-process one. ``optimizer=None``
    gathers the weights only (for best/)."""
    if ctx.mode != "fsdp":
        return (model, optimizer) if ctx.is_main else None
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    gathered = optimizer and get_optimizer_state_dict(model, optimizer, options=options)
    if not ctx.is_main:
        return None
    holder = None if gathered is None else StateHolder(
        renumber_optimizer_state(gathered, parameter_names(model, optimizer)))
    return cpu_copy(model_class, model.config, weights), holder


def load_checkpoint_into(checkpoint: Path, model: nn.Module, optimizer, ctx: DistributedContext,
                         model_class: type[nn.Module], **others: Any) -> TrainingState:
    """``state.load_checkpoint`` for every rank; FSDP reads full tensors into a CPU copy, then
    shards them into place. ``others``: scheduler and scaler."""
    if ctx.mode != "fsdp":
        return load_checkpoint(checkpoint, model=model, optimizer=optimizer, **others)
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    copy, holder = cpu_copy(model_class, model.config), StateHolder()
    state = load_checkpoint(checkpoint, model=copy, optimizer=holder, **others)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, copy.state_dict(), options=options)
    try:
        optimizer_state = renumber_optimizer_state(holder.state, parameter_names(model, optimizer))
    except (KeyError, IndexError, TypeError) as err:
        raise CheckpointError(f"{checkpoint}'s optimizer state does not fit this model ({err!r}); "
                              "resume with the settings of the saved run") from err
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
    return state


def parameter_names(model: nn.Module, optimizer) -> list[str]:
    """The name of each optimizer parameter, in ``optimizer.state_dict()``'s numbering order."""
    name_of = {id(param): name for name, param in model.named_parameters()}
    return [name_of[id(param)] for group in optimizer.param_groups for param in group["params"]]


def renumber_optimizer_state(state: dict, names: list[str]) -> dict:
    """Convert between FSDP's name-keyed optimizer state and ``optimizer.state_dict()``'s
    numbered one (either way), so checkpoints look the same whichever engine wrote them."""
    numbered = all(isinstance(key, int) for group in state["param_groups"] for key in group["params"])
    mapping = dict(enumerate(names)) if numbered else {name: i for i, name in enumerate(names)}
    return {"state": {mapping[key]: value for key, value in state["state"].items()},
            "param_groups": [{**group, "params": [mapping[key] for key in group["params"]]}
                             for group in state["param_groups"]]}


def cpu_copy(model_class: type[nn.Module], config: Any, state: dict | None = None) -> nn.Module:
    """An uninitialised CPU ``model_class(config)`` (no init time, no random numbers drawn:
    the RNG state saved next must be the training one), filled from ``state`` if given."""
    with torch.device("meta"):
        copy = model_class(config)
    ties = tied_aliases(copy)
    copy.to_empty(device="cpu")
    for name, source in ties.items():  # to_empty() unties shared parameters; tie them again
        owner, _, attr = name.rpartition(".")
        setattr(copy.get_submodule(owner), attr, copy.get_parameter(source))
    if state is not None:
        copy.load_state_dict(state, strict=False)  # tied copies may be absent
    return copy


class StateHolder:
    """Stands in for the optimizer in ``save_checkpoint``/``load_checkpoint``: hands out a state
    dict gathered beforehand, or keeps the one read from disk."""

    def __init__(self, state: dict | None = None) -> None:
        self.state = state

    def state_dict(self) -> dict | None:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.state = state


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def sharded_estimate_loss(model: nn.Module, batches, ctx: DistributedContext, *,
                          device: torch.device, autocast) -> float:
    """``steps.estimate_loss`` with the batches dealt out round-robin to the ranks.

    The result is the mean over all batches, as one process would compute it. Every rank
    runs the same number of forward passes (FSDP gathers weights inside forward, so a rank
    that finished early would leave the others waiting); the padding passes count for nothing.
    """
    from scratchllm.train import steps

    if not ctx.enabled:
        return steps.estimate_loss(model, batches, device=device, autocast=autocast)
    was_training = model.training
    model.eval()
    total, count, mine, spare = 0.0, 0, 0, None
    try:
        for index, batch in enumerate(batches):
            count += 1
            if spare is None:
                spare = batch
            if index % ctx.world_size == ctx.rank:
                inputs, targets = steps.to_device(batch, device)
                with autocast():
                    total += steps.batch_loss(model, inputs, targets).item()
                mine += 1
        for _ in range(-(-count // ctx.world_size) - mine):
            inputs, targets = steps.to_device(spare, device)
            with autocast():
                steps.batch_loss(model, inputs, targets)
    finally:
        model.train(was_training)
    total = ctx.all_reduce_sum([total], device)[0]
    return total / count if count else float("nan")

