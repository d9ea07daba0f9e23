"""The pairwise reward-model loss, its data and the task ``finetune_reward`` plugs into the loop.

Loss per preference pair (Bradley-Terry, as in InstructGPT; book ch. 8)::

    -log sigmoid(r_chosen - r_rejected - margin) + center_coef * (r_chosen + r_rejected)^2

``margin`` (Llama 2's margin loss, here one constant) asks the chosen answer to win by at
least that much before the loss lets go. The centering term (Eisenstein et al. 2023, TRL's
``center_rewards_coefficient``) is the per-pair square averaged over pairs, so it is a sum
over pairs like the rest and splits into micro batches exactly; it pulls the scores toward
zero mean, which the pairwise term alone leaves free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.data.preference import PreferenceDataset
from scratchllm.errors import ConfigError
from scratchllm.finetune.classify_plots import plot_train_val
from scratchllm.finetune.reward_model import right_padded
from scratchllm.finetune.reward_pooling import finish_with_start, pooled_scores
from scratchllm.train.metrics import METRICS_FILE, read_metrics

# The margins are in metrics.jsonl; a third figure would cost as much as the tiny runs' training.
PLOTS = (("loss", "Loss", "loss.png"), ("accuracy", "Pairwise accuracy", "accuracy.png"))


def reward_losses(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: float = 0.0,
                  center_coef: float = 0.0) -> torch.Tensor:
    """(B,) loss of each pair given the chosen and rejected rewards (module docstring)."""
    losses = -F.logsigmoid(chosen - rejected - margin)
    if center_coef:
        losses = losses + center_coef * (chosen + rejected) ** 2
    return losses


def check_loss_settings(margin: float, center_coef: float) -> None:
    if not margin >= 0 or margin == float("inf"):
        raise ConfigError(f"margin must be a finite number >= 0, got {margin!r}")
    if not center_coef >= 0 or center_coef == float("inf"):
        raise ConfigError(f"center_coef must be a finite number >= 0 (e.g. 0.01), got "
                          f"{center_coef!r}")


class RewardPairs:
    """Token ids of each pair's ``prompt + chosen + <end>`` and ``prompt + rejected + <end>``,
    and where each response starts in them (``chosen_starts``, ``rejected_starts``)."""

    def __init__(self, entries: Sequence[dict[str, Any]], tokenizer: Any, style: str, *,
                 end_id: int, end_ids: Sequence[int] = (), limit: int) -> None:
        pairs = PreferenceDataset(entries, tokenizer, style).items
        for key in ("chosen", "rejected"):
            built = [finish_with_start(p[key]["ids"], p[key]["prompt_len"], end_id, limit,
                                       end_ids) for p in pairs]
            setattr(self, key, [b[0] for b in built])
            setattr(self, f"{key}_starts", [b[1] for b in built])
        self.pad_id = end_id

    def __len__(self) -> int:
        return len(self.chosen)

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """One right-padded (2B, T) batch: the B chosen rows, then the B rejected ones."""
        ids, lengths = right_padded([self.chosen[i] for i in indices] +
                                    [self.rejected[i] for i in indices], self.pad_id)
        starts = torch.tensor([self.chosen_starts[i] for i in indices] +
                              [self.rejected_starts[i] for i in indices])
        return {"input_ids": ids, "lengths": lengths, "starts": starts}

    def batches(self, batch_size: int):
        for start in range(0, len(self), batch_size):
            yield self.collate(range(start, min(start + batch_size, len(self))))


def pair_rewards(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
                 pooling: str = "last") -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) float32 rewards of a collated batch, in one forward pass."""
    scores = pooled_scores(model, batch["input_ids"].to(device), batch["lengths"],
                           batch.get("starts"), pooling).float()
    n = len(scores) // 2
    return scores[:n], scores[n:]


@torch.no_grad()
def evaluate_pairs(model: nn.Module, pairs: RewardPairs, *, batch_size: int,
                   device: torch.device, margin: float = 0.0, center_coef: float = 0.0,
                   max_batches: int | None = None, autocast=contextlib.nullcontext,
                   pooling: str = "last") -> dict[str, float]:
    """Mean loss, pairwise accuracy (chosen scored strictly higher) and mean margin."""
    was_training = model.training
    model.eval()
    loss = wins = gap = 0.0
    count = 0
    try:
        for i, batch in enumerate(pairs.batches(batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            with autocast():
                chosen, rejected = pair_rewards(model, batch, device, pooling)
            loss += float(reward_losses(chosen, rejected, margin=margin,
                                        center_coef=center_coef).sum())
            wins += float((chosen > rejected).sum())
            gap += float((chosen - rejected).sum())
            count += len(chosen)
    finally:
        model.train(was_training)
    n = max(count, 1)
    return {"loss": loss / n, "accuracy": wins / n, "margin": gap / n, "pairs": count}


class RewardTask:
    """The pairwise loss summed over pairs; accuracy and margin logged with every step."""

    dropout = True

    def __init__(self, model: nn.Module, train: RewardPairs, val: RewardPairs | None, *,
                 batch_size: int, eval_batches: int, margin: float, center_coef: float,
                 device: torch.device, save: Callable, out_dir: Path,
                 pooling: str = "last") -> None:
        self.model, self.train_pairs, self.val_pairs = model, train, val
        self.batch_size, self.eval_batches, self.device = batch_size, eval_batches, device
        self.margin, self.center_coef, self.pooling = margin, center_coef, pooling
        self.save_model, self.out_dir = save, out_dir
        self.size = len(train)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self.train_pairs.collate(indices)

    def measure(self, batch) -> tuple[int, int]:
        return len(batch["lengths"]) // 2, int(batch["lengths"].sum())

    def loss_sum(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = pair_rewards(self.model, batch, self.device, self.pooling)
        losses = reward_losses(chosen, rejected, margin=self.margin, center_coef=self.center_coef)
        chosen, rejected = chosen.detach(), rejected.detach()
        return losses.sum(), {"accuracy": float((chosen > rejected).sum()),
                              "margin": float((chosen - rejected).sum())}

    def evaluate(self) -> dict[str, float]:
        """The first ``eval_batches`` training batches and the whole validation split (5%)."""
        out = {}
        for name, pairs, limit in (("train", self.train_pairs, self.eval_batches),
                                   ("val", self.val_pairs, None)):
            if pairs is None or not len(pairs):
                continue
            values = evaluate_pairs(self.model, pairs, batch_size=self.batch_size,
                                    device=self.device, margin=self.margin,
                                    center_coef=self.center_coef, max_batches=limit,
                                    pooling=self.pooling)
            out.update({f"{name}_{k}": v for k, v in values.items() if k != "pairs"})
        return out

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return {}

    def score(self, event: str, record: dict) -> tuple[float, ...] | None:
        """Best: highest validation pairwise accuracy, ties to the lower validation loss."""
        if event != "eval" or "val_accuracy" not in record:
            return None
        return (record["val_accuracy"], -record["val_loss"])

    def plot(self) -> None:
        plot_reward_run(self.out_dir)


def plot_reward_run(run_dir: Path) -> list[Path]:
    """``loss.png`` and ``accuracy.png`` (train and validation) of a run."""
    records = [r for r in read_metrics(run_dir / METRICS_FILE) if r.get("event") == "eval"]
    written = [plot_train_val(records, key, label, run_dir / name) for key, label, name in PLOTS]
    return [p for p in written if p is not None]
