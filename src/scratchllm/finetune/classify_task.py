"""The classification loss and measurements that ``finetune_classifier`` plugs into the loop (book 6.6-6.7)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.data.classification import ClassificationDataset
from scratchllm.evaluate.classification import classification_report
from scratchllm.finetune.classifier_model import last_token_logits
from scratchllm.finetune.classify_plots import plot_classifier_run


@torch.no_grad()
def evaluate_split(model: nn.Module, dataset: ClassificationDataset, *, batch_size: int,
                   device: torch.device, autocast=contextlib.nullcontext,
                   max_batches: int | None = None) -> tuple[list[int], list[int], float]:
    """(true labels, predicted labels, mean loss) over a split or its first ``max_batches``."""
    was_training = model.training
    model.eval()
    y_true: list[int] = []
    y_pred: list[int] = []
    losses = []
    try:
        for i, batch in enumerate(dataset.batches(batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            labels = batch.labels.to(device)
            with autocast():
                logits = last_token_logits(model, batch.input_ids.to(device), batch.lengths)
            losses.append(F.cross_entropy(logits.float(), labels).item())
            y_true += batch.labels.tolist()
            y_pred += logits.argmax(-1).tolist()
    finally:
        model.train(was_training)
    return y_true, y_pred, sum(losses) / max(1, len(losses))


class ClassifyTask:
    """Cross-entropy of the class scores at each text's last real token (book 6.7)."""

    dropout = True

    def __init__(self, model: nn.Module, datasets: list, labels: list[str], *, batch_size: int,
                 eval_batches: int, device: torch.device, save, out_dir: Path) -> None:
        self.model, self.labels, self.batch_size = model, labels, batch_size
        self.train_ds, self.val_ds, _ = datasets
        self.eval_batches, self.device, self.save_model, self.out_dir = eval_batches, device, save, out_dir
        self.size = len(self.train_ds)
        self.val_loss = float("nan")  # of the whole validation split, at the last epoch end

    def collate(self, indices: list[int]):
        return self.train_ds.collate(indices)

    def measure(self, batch) -> tuple[int, int]:
        return len(batch.labels), batch.input_ids.numel()

    def loss_sum(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = last_token_logits(self.model, batch.input_ids.to(self.device), batch.lengths)
        return F.cross_entropy(logits.float(), batch.labels.to(self.device), reduction="sum"), {}

    def splits(self):
        return [(n, ds) for n, ds in (("train", self.train_ds), ("val", self.val_ds)) if ds is not None]

    def evaluate(self) -> dict[str, float]:
        """Loss on the first ``eval_batches`` batches of each split (book 6.7)."""
        return {f"{name}_loss": evaluate_split(self.model, ds, batch_size=self.batch_size,
                                               device=self.device, max_batches=self.eval_batches)[2]
                for name, ds in self.splits()}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Accuracy on ``eval_batches`` training batches and the whole validation split."""
        record = {}
        for name, ds in self.splits():
            y_true, y_pred, loss = evaluate_split(
                self.model, ds, batch_size=self.batch_size, device=self.device,
                max_batches=self.eval_batches if name == "train" else None)
            record[f"{name}_accuracy"] = classification_report(y_true, y_pred,
                                                               self.labels)["accuracy"]
            if name == "val":
                self.val_loss = loss
        return record

    def score(self, event: str, record: dict) -> tuple[float, ...] | None:
        """Best epoch: highest validation accuracy, ties to the lower validation loss."""
        if event != "epoch" or "val_accuracy" not in record:
            return None
        return (record["val_accuracy"], -self.val_loss)

    def plot(self) -> None:
        plot_classifier_run(self.out_dir)
