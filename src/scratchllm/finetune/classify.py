"""Fine-tune a pretrained model directory into a text classifier (book ch. 6; LoRA: appendix E).

``finetune_classifier`` is the book's chapter-6 pipeline as one call: read and balance the
labelled file, split 70/10/20, swap the output head for a ``num_classes`` one, train with
AdamW on the last real token's cross-entropy, then report accuracy, precision, recall, F1
and confusion matrices per split. ``OUT/`` receives ``model/`` (a classifier model directory
for ``scratchllm classify``), ``best/`` (the best validation epoch's classifier),
``metrics.jsonl``, ``loss.png``, ``accuracy.png`` and ``results.json`` (plus
``adapter.safetensors`` for LoRA runs, and ``checkpoints/`` + ``latest/`` when checkpoints
were saved). Training runs in the loop every fine-tuning method shares (``finetune.loop``).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, TextIO

import torch
from torch import nn

from scratchllm.utils.atomic import atomic_write_json
from scratchllm.data.classification import (
    ClassificationDataset, LabelledData, balance_classes, load_labelled_file, shuffle_split,
)
from scratchllm.errors import ConfigError, DataError
from scratchllm.evaluate.classification import classification_report, format_report
from scratchllm.finetune.classifier_model import (
    MODEL_SUBDIR, attach_classifier_head, classifier_metadata, load_classifier,
    save_classifier, set_trainable,
)
from scratchllm.finetune.classify_plots import plot_classifier_run
from scratchllm.finetune.classify_task import ClassifyTask, evaluate_split
from scratchllm.finetune.loop import FinetuneLoop, LoopSettings
from scratchllm.finetune.runs import RunSetup, check_out, claim_out, master_weights, source_name
from scratchllm.model.lora import lora_layers, merge_lora, save_lora, trainable_parameters
from scratchllm.train.metrics import METRICS_FILE, MetricsLog
from scratchllm.train.run_dir import link_model_dir
from scratchllm.train.steps import autocast_for, resolve_precision
from scratchllm.utils.device import resolve_device
from scratchllm.weights.auto import open_model

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
    interrupted: bool = False         # stopped early (Ctrl-C, SIGTERM, stop_at): resume=True
    stop_signal: int | None = None    # the signal that stopped it, if one did

    def accuracy(self, split: str = "test") -> float:
        return self.metrics[split]["accuracy"]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["out_dir"], values["model_dir"] = str(self.out_dir), str(self.model_dir)
        return values


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
                        stream: TextIO | None = None, overwrite: bool = False,
                        resume: bool = False, micro_batch_size: int | None = None,
                        warmup_steps: int = 0, min_lr: float | None = None,
                        save_every: int = 0, keep_last: int = 3,
                        stop_at: int | None = None) -> ClassifierResult:
    """Fine-tune ``model_dir`` on ``data_file`` and save the classifier under ``out_dir`` (book 6.7).

    ``OUT/best/`` keeps the weights of the epoch with the highest validation accuracy;
    ``keep_best`` makes them the saved classifier too (early stopping without stopping: later
    epochs can only overfit). ``split_seed`` (default: ``seed``) fixes balancing and the split
    on its own, so training can be re-seeded while the test texts stay the same. The loop
    options are those of ``finetune.loop.LoopSettings``.
    """
    if isinstance(eval_batches, bool) or not isinstance(eval_batches, int) or eval_batches < 1:
        raise ConfigError(f"eval_batches must be a positive integer, got {eval_batches!r}")
    loop_settings = LoopSettings(epochs=epochs, batch_size=batch_size, lr=lr,
                                 weight_decay=weight_decay, seed=seed, eval_every=eval_every,
                                 micro_batch_size=micro_batch_size, warmup_steps=warmup_steps,
                                 min_lr=min_lr, grad_clip=grad_clip, save_every=save_every,
                                 keep_last=keep_last, progress=progress,
                                 stop_at=stop_at)
    loop_settings.check()
    settings = dict(model_dir=str(model_dir), data_file=str(data_file), epochs=epochs,
                    batch_size=batch_size, lr=lr, weight_decay=weight_decay, trainable=trainable,
                    balance=balance, seed=seed, max_length=max_length, truncate=truncate,
                    lora_rank=lora_rank, lora_alpha=lora_alpha, precision=precision,
                    keep_best=keep_best)
    start = time.perf_counter()
    out_dir, checkpoint = check_out(model_dir, out_dir, overwrite=overwrite, resume=resume)
    device_ = resolve_device(device)
    precision = resolve_precision(precision, device_)
    data = load_labelled_file(data_file, file_format=file_format, labels=labels,
                              text_column=text_column, label_column=label_column)
    if balance:
        data = balance_classes(data, seed if split_seed is None else split_seed)
    splits = shuffle_split(data, train_frac, val_frac, seed if split_seed is None else split_seed)
    if keep_best and not splits[1].examples:
        raise ConfigError("keep_best needs a validation split; set val_frac > 0")
    loaded = open_model(model_dir, device=device_, require_tokenizer=True)
    model, tokenizer = master_weights(loaded.model), loaded.tokenizer
    datasets = build_datasets(splits, tokenizer, model.config.context_length,
                              max_length=max_length, truncate=truncate)
    train_ds, val_ds, test_ds = datasets
    if len(train_ds) < batch_size:
        raise DataError(f"{data.source}: the training split has {len(train_ds)} examples, fewer "
                        f"than one batch of {batch_size}; lower --batch-size or add data")

    torch.manual_seed(seed)  # the new head's initialization (book 6.5)
    attach_classifier_head(model, len(data.labels))
    set_trainable(model, trainable, lora_rank=lora_rank, lora_alpha=lora_alpha,
                  lora_dropout=lora_dropout)
    model.to(device_)
    n_trainable, n_total = trainable_parameters(model)
    out_dir = claim_out(out_dir, overwrite=overwrite, checkpoint=checkpoint)
    labelled = classifier_metadata(data.labels, tokenizer.eot_id, train_ds.max_length,
                                   trainable=trainable, truncate=truncate)
    # checkpoints carry the labels too: a run stopped early (Ctrl-C, a kill) leaves a latest/
    # that `classify` and `evaluate classification` load, not a "language model" they refuse
    setup = RunSetup(model, tokenizer, device_, precision, out_dir,
                     MetricsLog(out_dir / METRICS_FILE), loaded.eos_ids, checkpoint,
                     resume_requested=resume, model_metadata=labelled)

    def save(directory: Path, model_: nn.Module, metadata: dict) -> Path:
        return save_classifier(directory, model_, tokenizer, {**metadata, **labelled})

    task = ClassifyTask(model, datasets, list(data.labels), batch_size=batch_size,
                        eval_batches=eval_batches, device=device_, save=save, out_dir=out_dir)
    recipe = {"method": "classify", "model": source_name(model_dir),
              "data_file": source_name(data_file), "trainable": trainable,
              "balance": balance, "max_length": max_length, "truncate": truncate,
              "lora": [lora_rank, lora_alpha, lora_dropout] if trainable == "lora" else None,
              "labels": list(data.labels), "split_seed": split_seed,
              "fractions": [train_frac, val_frac], "eval_batches": eval_batches}
    loop = FinetuneLoop(setup, task, loop_settings, recipe, stream=stream)
    steps_total = loop.total_steps
    sizes = f"{len(train_ds)}/{len(val_ds) if val_ds else 0}/{len(test_ds) if test_ds else 0}"
    run = loop.run(intro=f"fine-tuning {n_trainable:,} of {n_total:,} parameters ({trainable}) "
                   f"on {device_} ({precision}): {sizes} examples, labels {data.labels}, "
                   f"{steps_total} steps")
    say = loop.say
    result = ClassifierResult(
        out_dir=out_dir, model_dir=out_dir / MODEL_SUBDIR, labels=list(data.labels), metrics={},
        split_sizes={n: len(s.examples) for n, s in zip(("train", "val", "test"), splits)},
        max_length=train_ds.max_length, trainable_params=n_trainable, total_params=n_total,
        steps=run.step, examples_seen=run.examples_seen, seconds=time.perf_counter() - start,
        settings=settings, interrupted=run.interrupted, stop_signal=run.stop_signal)
    if run.interrupted:
        return result

    run.best.write(model)  # OUT/best/, in the layout the weights are in now
    if keep_best and run.best.restore_into(model):
        result.settings["best_epoch"] = run.best.info.get("epoch")
        say(f"kept epoch {run.best.info.get('epoch')}'s weights (best validation accuracy "
            f"{run.best.score[0] * 100:.2f}%)")
    autocast = autocast_for(precision, device_)
    for name, ds in (("train", train_ds), ("val", val_ds), ("test", test_ds)):
        if ds is not None:
            y_true, y_pred, loss_ = evaluate_split(model, ds, batch_size=batch_size,
                                                   device=device_, autocast=autocast)
            result.metrics[name] = {**classification_report(y_true, y_pred, data.labels),
                                    "loss": loss_}
            say(f"{name}:\n{format_report(result.metrics[name])}")

    if lora_layers(model):
        save_lora(model, out_dir / ADAPTER_FILE)
        merge_lora(model)
    result.model_dir = save_classifier(out_dir / MODEL_SUBDIR, model, tokenizer, classifier_metadata(
        data.labels, tokenizer.eot_id, train_ds.max_length, trainable=trainable,
        truncate=truncate, test_accuracy=result.metrics.get("test", {}).get("accuracy")))
    if (out_dir / "latest").is_dir():  # checkpoints pointed it at a training state
        link_model_dir(result.model_dir, out_dir / "latest")  # now: the final classifier
    plot_classifier_run(out_dir)
    result.seconds = time.perf_counter() - start
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
