"""DPO's reference model: its log-probabilities computed once per example, or a model to run.

The reference never changes during DPO, so its log-probability of each example's chosen and
rejected response is the same at every step and every epoch. ``cache_reference_logprobs``
computes them in one pass before training (no gradients, batches sorted by length so little
is spent on padding) and stores them with the examples; ``with_reference`` puts them into each
batch. Training then runs the policy alone and needs no second model in memory. The pass is
deterministic, so a resumed run recomputes exactly the same numbers.

Without the cache (``cache_reference=False``) a reference model runs beside the policy at
every step: a frozen deep copy when all weights train, or, with LoRA, the policy itself with
its adapters switched off (``LoRABaseReference``): the base weights are frozen, so that *is*
the starting model, at no extra memory.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from scratchllm.finetune.logprobs import pair_logprobs
from scratchllm.model.cpu_matmul import onednn_linears
from scratchllm.model.lora import LoRALinear, lora_layers

REFERENCE_KEY = "reference"  # an example's (chosen, rejected) reference log-probs, fp32


def frozen_copy(model: nn.Module) -> nn.Module:
    """The reference model: the policy as it is now, in eval mode, never updated."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base model: each LoRA layer is swapped for the frozen linear layer
    it wraps, and put back afterwards (exactly the base computation, not base + 0 * update)."""
    layers = lora_layers(model)
    try:
        for name, layer in layers.items():
            _set_submodule(model, name, layer.base)
        yield model
    finally:
        for name, layer in layers.items():
            _set_submodule(model, name, layer)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


class LoRABaseReference(nn.Module):
    """The LoRA policy's base model as a reference: its forward runs the policy with the
    adapters off. Holds no weights of its own (the policy is not registered as a child, so it
    is neither saved nor counted twice)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self._policy = (policy,)  # a tuple hides it from nn.Module's registration

    @property
    def config(self) -> Any:
        return self._policy[0].config

    @property
    def out_head(self) -> nn.Module:
        head = self._policy[0].out_head
        return head.base if isinstance(head, LoRALinear) else head

    def forward(self, token_ids: torch.Tensor, *, return_hidden: bool = False,
                **kwargs: Any) -> torch.Tensor:
        policy = self._policy[0]
        was_training = policy.training
        policy.eval()
        try:
            with adapters_disabled(policy):
                return policy(token_ids, return_hidden=return_hidden, **kwargs)
        finally:
            policy.train(was_training)


def reference_model(policy: nn.Module) -> nn.Module:
    """A per-step reference: the LoRA base when ``policy`` has adapters, else a deep copy."""
    return LoRABaseReference(policy) if lora_layers(policy) else frozen_copy(policy)


@torch.no_grad()
def cache_reference_logprobs(model: nn.Module, dataset: Any, collate: Callable, *,
                             count: int | None = None, batch_size: int = 8,
                             average: bool = True, device: torch.device | None = None,
                             autocast: Callable = contextlib.nullcontext) -> None:
    """Store the reference log-probs of the first ``count`` examples of ``dataset`` in each
    example (``item["reference"]``), ``model`` being the reference (eval mode, no gradients).

    Run it before training, with the model as training starts from it (and before a resumed
    run loads its checkpoint). Examples are batched by length; a row's log-probs do not depend
    on the padding beside it (causal attention; right padding), so any batching gives the same
    numbers up to float rounding, and this one gives the same numbers every time.
    """
    items: Sequence[dict] = dataset.items
    count = len(items) if count is None else min(count, len(items))
    order = sorted(range(count), key=lambda i: (max(len(items[i]["chosen"]["ids"]),
                                                    len(items[i]["rejected"]["ids"])), i))
    was_training = model.training
    model.eval()
    try:
        with onednn_linears():  # the forward passes as training's (model.cpu_matmul)
            for start in range(0, count, batch_size):
                indices = order[start:start + batch_size]
                batch = collate([items[i] for i in indices])
                if device is not None:
                    batch = {k: v.to(device) for k, v in batch.items()}
                with autocast():
                    chosen, rejected = pair_logprobs(model, batch, average=average)
                pairs = torch.stack([chosen, rejected], dim=1).float().cpu()
                for index, row in zip(indices, pairs):
                    items[index][REFERENCE_KEY] = row.clone()
    finally:
        model.train(was_training)


def with_reference(collate: Callable) -> Callable:
    """``collate`` plus ``reference_chosen``/``reference_rejected`` (B,) tensors when every
    example of the batch has cached reference log-probs."""
    def collate_with_reference(batch: Sequence[dict]) -> dict[str, torch.Tensor]:
        out = collate(batch)
        if batch and all(REFERENCE_KEY in pair for pair in batch):
            refs = torch.stack([pair[REFERENCE_KEY] for pair in batch])
            out["reference_chosen"], out["reference_rejected"] = refs[:, 0], refs[:, 1]
        return out
    return collate_with_reference
