"""``OUT/value_head.safetensors``: PPO's value head, saved beside the policy it reads.

The policy (``OUT/latest``) is an ordinary model directory that ``generate``, ``chat``,
``serve`` and ``export`` open; the value head is not part of it, since it only means
something to PPO. It is saved on its own so a run can be inspected (what value does the
critic give a prompt?) and a later PPO run can start its critic from it (``--value-head``)
rather than from zero. The file holds ``weight`` (1, emb_dim) and ``bias`` (1,), applied to
the output of the policy's ``final_norm`` (``finetune.rl.policy.ValueHead``); its metadata
says how the head was initialised and after how many steps it was saved.
"""

from __future__ import annotations

import os
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from scratchllm.errors import CheckpointError, ConfigError, MissingFileError
from scratchllm.utils.atomic import AtomicWriter

VALUE_HEAD_FILE = "value_head.safetensors"
FORMAT = "scratchllm-value-head"


def save_value_head(head: nn.Module, path: str | os.PathLike, *, init: str, step: int) -> Path:
    """Write ``head``'s weights atomically with ``init`` ("zero" or the file it came from)."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous()
               for k, v in head.state_dict().items()}
    metadata = {"format": FORMAT, "emb_dim": str(tensors["weight"].shape[1]), "init": init,
                "step": str(step), "reads": "final_norm output (the hidden state the LM head reads)"}
    path = Path(path)
    with AtomicWriter(path) as out:
        out.write(safetensors.torch.save(tensors, metadata=metadata))
    return path


def load_value_head(head: nn.Module, path: str | os.PathLike) -> None:
    """Copy the weights saved at ``path`` into ``head``; a file for another model size, or not
    a value head at all, is refused with a message saying what to pass instead."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"value head {path} not found; pass the {VALUE_HEAD_FILE} an "
                               "earlier `finetune ppo` run wrote, or omit --value-head to start "
                               "from zero")
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); pass the "
                              f"{VALUE_HEAD_FILE} of an earlier PPO run") from None
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:
        raise ConfigError(f"{path} holds {found}, but this policy's value head needs "
                          f"{expected}; pass the {VALUE_HEAD_FILE} of a PPO run on a model of "
                          "the same width, or omit --value-head")
    with torch.no_grad():
        for name, param in head.state_dict().items():
            param.copy_(tensors[name])
