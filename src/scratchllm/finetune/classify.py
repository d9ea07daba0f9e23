"""Fine-tune a pretrained model directory into a text classifier (book ch. 6; LoRA: appendix E).

``finetune_classifier`` is the book's chapter-6 pipeline as one call: read and balance the
labelled file, split 70/10/20, swap the output head for a ``num_classes`` one, train with
AdamW on the last real token's cross-entropy, then report accuracy, precision, recall, F1
and confusion matrices per split. ``OUT/`` receives ``model/`` (a classifier model directory
for ``scratchllm classify``), ``metrics.jsonl``, ``loss.png``, ``accuracy.png`` and
``results.json`` (plus ``adapter.safetensors`` for LoRA runs).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.utils.atomic import atomic_write_json
from scratchllm.data.classification import (
    ClassificationDataset, LabelledData, balance_classes, load_labelled_file, shuffle_split,
)
from scratchllm.errors import ConfigError, DataError
from scratchllm.evaluate.classification import classification_report, format_report
from scratchllm.finetune.classifier_model import (
    MODEL_SUBDIR, attach_classifier_head, classifier_metadata, last_token_logits, load_classifier,
    save_classifier, set_trainable,
)
from scratchllm.finetune.classify_plots import plot_classifier_run
from scratchllm.model.lora import lora_layers, merge_lora, save_lora, trainable_parameters
from scratchllm.utils.outputs import FINETUNE_RUN, check_output_dir, prepare_output_dir
from scratchllm.weights.auto import open_model
from scratchllm.train.metrics import METRICS_FILE, MetricsLog, Progress
from scratchllm.train.optim import build_optimizer
from scratchllm.train.steps import autocast_for, grad_scaler_for, resolve_precision
from scratchllm.utils.device import resolve_device

RESULTS_FILE = "results.json"
ADAPTER_FILE = "adapter.safetensors"


@dataclass
class ClassifierResult:
    """What a fine-tuning run produced: metrics per split and where the files are."""

    out_dir: Path
    model_dir: Path
    labels: list[str]
    metrics: dict[str, dict]          # split -> classification_report(...)
    split_sizes: dict[str, int]
    max_length: int
    trainable_params: int
    total_params: int
    steps: int
    examples_seen: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def accuracy(self, split: str = "test") -> float:
        return self.metrics[split]["accuracy"]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["out_dir"], values["model_dir"] = str(self.out_dir), str(self.model_dir)
        return values


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


def build_datasets(splits: Sequence[LabelledData], tokenizer: Any, context_length: int, *,
                   max_length: int | None, truncate: bool) -> list[ClassificationDataset]:
    """Encode each split; no text may exceed the model's context (unless truncated)."""
    limit = max_length if max_length is not None else (context_length if truncate else None)
    if limit is not None and limit > context_length:
        raise ConfigError(f"max_length {limit} exceeds the model's context length "
                          f"{context_length}; use --max-length {context_length} or less")
    datasets = []
    for split in splits:
        if not split.examples:
            datasets.append(None)
            continue
        ds = ClassificationDataset(split, tokenizer, max_length=limit, truncate=truncate)
        if ds.max_length > context_length:
            row = ds.rows[ds.lengths.index(ds.max_length)]
            raise DataError(f"{split.source}, row {row}: text is {ds.max_length} tokens, more "
                            f"than the model's context length {context_length}; pass "
                            f"--max-length {context_length} --truncate to cut long texts")
        datasets.append(ds)
    return datasets


def finetune_classifier(model_dir: str | os.PathLike, data_file: str | os.PathLike,
                        out_dir: str | os.PathLike, *, epochs: int = 5, batch_size: int = 8,
                        lr: float = 5e-5, weight_decay: float = 0.1,
                        trainable: str = "last-block", balance: bool = True, seed: int = 123,
                        max_length: int | None = None, truncate: bool = False,
                        eval_every: int = 50, eval_batches: int = 5, lora_rank: int = 8,
                        lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                        labels: Sequence[str] | None = None, file_format: str | None = None,
                        text_column: str = "text", label_column: str = "label",
                        train_frac: float = 0.7, val_frac: float = 0.1,
                        grad_clip: float | None = None, keep_best: bool = False,
                        split_seed: int | None = None, device: str = "auto",
                        precision: str = "auto", progress: bool = True,
                        stream: TextIO | None = None, overwrite: bool = False) -> ClassifierResult:
    """Fine-tune ``model_dir`` on ``data_file`` and save the classifier under ``out_dir`` (book 6.7).

    ``keep_best`` restores, after the last epoch, the weights of the epoch with the highest
    validation accuracy (early stopping without stopping: later epochs can only overfit).
    ``split_seed`` (default: ``seed``) fixes balancing and the split on its own, so training
    can be re-seeded while the test texts stay the same.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("eval_every", eval_every), ("eval_batches", eval_batches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not lr > 0 or weight_decay < 0:
        raise ConfigError(f"lr must be > 0 and weight_decay >= 0, got {lr!r} and {weight_decay!r}")
    settings = dict(model_dir=str(model_dir), data_file=str(data_file), epochs=epochs,
                    batch_size=batch_size, lr=lr, weight_decay=weight_decay, trainable=trainable,
                    balance=balance, seed=seed, max_length=max_length, truncate=truncate,
                    lora_rank=lora_rank, lora_alpha=lora_alpha, precision=precision,
                    keep_best=keep_best)
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser()
    check_output_dir(out_dir, FINETUNE_RUN, overwrite=overwrite)  # before any slow work
    device_ = resolve_device(device)
    precision = resolve_precision(precision, device_)
    autocast, scaler = autocast_for(precision, device_), grad_scaler_for(precision, device_)
    bar: Progress | None = None  # the step bar once training starts; messages go above it

    def say(text: str) -> None:
        if progress:
            (bar if bar is not None else Progress(1, stream=stream)).message(text)

    data = load_labelled_file(data_file, file_format=file_format, labels=labels,
                              text_column=text_column, label_column=label_column)
    if balance:
        data = balance_classes(data, seed if split_seed is None else split_seed)
    splits = shuffle_split(data, train_frac, val_frac, seed if split_seed is None else split_seed)
    model, tokenizer = open_model(model_dir, device=device_, require_tokenizer=True)
    train_ds, val_ds, test_ds = build_datasets(splits, tokenizer, model.config.context_length,
                                               max_length=max_length, truncate=truncate)
    steps_per_epoch = train_ds.num_batches(batch_size, drop_last=True)
    if steps_per_epoch == 0:
        raise DataError(f"{data.source}: the training split has {len(train_ds)} examples, fewer "
                        f"than one batch of {batch_size}; lower --batch-size or add data")

    torch.manual_seed(seed)  # the new head's initialization (book 6.5)
    attach_classifier_head(model, len(data.labels))
    set_trainable(model, trainable, lora_rank=lora_rank, lora_alpha=lora_alpha,
                  lora_dropout=lora_dropout)
    model.to(device_)
    n_trainable, n_total = trainable_parameters(model)
    # The book's optimizer: AdamW with default betas, decaying every trainable tensor.
    optimizer = build_optimizer(model, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999),
                                decay_all=True)
    params = [p for p in model.parameters() if p.requires_grad]

    out_dir, _ = prepare_output_dir(out_dir, FINETUNE_RUN, overwrite=overwrite)
    metrics = MetricsLog(out_dir / METRICS_FILE)
    total = epochs * steps_per_epoch
    bar = Progress(total, every=10, stream=stream) if progress else None
    say(f"fine-tuning {n_trainable:,} of {n_total:,} parameters ({trainable}) on {device_} "
        f"({precision}): {len(train_ds)}/{len(val_ds) if val_ds else 0}/"
        f"{len(test_ds) if test_ds else 0} examples, labels {data.labels}, {total} steps")

    if keep_best and val_ds is None:
        raise ConfigError("keep_best needs a validation split; set val_frac > 0")
    step, seen = 0, 0
    best: tuple[tuple[float, float], int, dict] | None = None  # (val acc, -loss), epoch, weights
    model.train()
    for epoch in range(1, epochs + 1):
        for batch in train_ds.batches(batch_size, shuffle=True, seed=seed + epoch, drop_last=True):
            tic = time.perf_counter()
            labels_ = batch.labels.to(device_)
            with autocast():
                logits = last_token_logits(model, batch.input_ids.to(device_), batch.lengths)
            loss = F.cross_entropy(logits.float(), labels_)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.unscale_(optimizer)
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            step, seen = step + 1, seen + len(batch.labels)
            if bar is not None:
                bar.update(step, loss=loss.item(), lr=lr, tokens_per_sec=batch.input_ids.numel()
                           / max(time.perf_counter() - tic, 1e-9))
            if step % 10 == 0:
                metrics.write({"event": "train", "step": step, "epoch": epoch,
                               "examples_seen": seen, "loss": loss.item()})
            if (step - 1) % eval_every == 0:  # like the book: after step 1, then every N
                record = {"event": "eval", "step": step, "epoch": epoch, "examples_seen": seen}
                for name, ds in (("train", train_ds), ("val", val_ds)):
                    if ds is not None:
                        record[f"{name}_loss"] = evaluate_split(
                            model, ds, batch_size=batch_size, device=device_, autocast=autocast,
                            max_batches=eval_batches)[2]
                metrics.write(record)
        record = {"event": "epoch", "step": step, "epoch": epoch, "examples_seen": seen}
        for name, ds, limit in (("train", train_ds, eval_batches), ("val", val_ds, None)):
            if ds is not None:
                y_true, y_pred, loss_ = evaluate_split(model, ds, batch_size=batch_size,
                                                       device=device_, autocast=autocast,
                                                       max_batches=limit)
                record[f"{name}_accuracy"] = classification_report(y_true, y_pred,
                                                                   data.labels)["accuracy"]
                val_score = (record[f"{name}_accuracy"], -loss_)  # ties: lower loss wins
        metrics.write(record)
        say(f"epoch {epoch}: " + ", ".join(f"{k} {v * 100:.2f}%" for k, v in record.items()
                                          if k.endswith("accuracy")))
        if keep_best and (best is None or val_score > best[0]):
            best = (val_score, epoch, {k: v.detach().clone()
                                       for k, v in model.state_dict().items()})
    if bar is not None:
        bar.close()
    if best is not None:
        model.load_state_dict(best[2])
        settings["best_epoch"] = best[1]
        say(f"kept epoch {best[1]}'s weights (best validation accuracy {best[0][0] * 100:.2f}%)")

    reports = {}
    for name, ds in (("train", train_ds), ("val", val_ds), ("test", test_ds)):
        if ds is not None:
            y_true, y_pred, loss_ = evaluate_split(model, ds, batch_size=batch_size,
                                                   device=device_, autocast=autocast)
            reports[name] = {**classification_report(y_true, y_pred, data.labels), "loss": loss_}
            say(f"{name}:\n{format_report(reports[name])}")

    if lora_layers(model):
        save_lora(model, out_dir / ADAPTER_FILE)
        merge_lora(model)
    model_path = save_classifier(out_dir / MODEL_SUBDIR, model, tokenizer, classifier_metadata(
        data.labels, tokenizer.eot_id, train_ds.max_length, trainable=trainable,
        truncate=truncate, test_accuracy=reports.get("test", {}).get("accuracy")))
    plot_classifier_run(out_dir)
    result = ClassifierResult(
        out_dir=out_dir, model_dir=model_path, labels=list(data.labels), metrics=reports,
        split_sizes={n: len(s.examples) for n, s in zip(("train", "val", "test"), splits)},
        max_length=train_ds.max_length, trainable_params=n_trainable, total_params=n_total,
        steps=step, examples_seen=seen, seconds=time.perf_counter() - start, settings=settings)
    atomic_write_json(out_dir / RESULTS_FILE, result.to_dict())
    return result


def evaluate_classifier(classifier_dir: str | os.PathLike, data_file: str | os.PathLike, *,
                        batch_size: int = 16, max_length: int | None = None,
                        truncate: bool = False, device: str = "auto") -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and the confusion matrix of a saved classifier on
    every row of ``data_file`` (book 6.6 ``calc_accuracy_loader``, with the full report)."""
    device_ = resolve_device(device)
    model, tokenizer, info = load_classifier(classifier_dir, device=device_)
    data = load_labelled_file(data_file, labels=info["labels"])
    limit = max_length or info.get("max_length")
    (dataset,) = build_datasets([data], tokenizer, model.config.context_length,
                                max_length=limit, truncate=truncate)
    y_true, y_pred, loss = evaluate_split(model, dataset, batch_size=batch_size, device=device_)
    return {**classification_report(y_true, y_pred, info["labels"]), "loss": loss,
            "data_file": str(data_file)}
