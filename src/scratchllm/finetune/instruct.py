"""Instruction fine-tuning (book ch. 7): teach a pretrained GPT to answer instructions.

``finetune_instruct`` is the chapter as one call: split the data 85/5/10 (7.2), batch it
with the masked collate (7.3), train with AdamW for two epochs (7.6), save the model, then
answer every test instruction greedily and store the answers beside the inputs (7.7) for
scoring with ``scratchllm evaluate judge`` (7.8).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.utils.atomic import atomic_write_json
from scratchllm.data.instruction import (
    IGNORE_INDEX,
    InstructionDataset,
    check_style,
    encode_example,
    instruction_collate,
    load_instruction_data,
    split_entries,
)
from scratchllm.errors import ConfigError
from scratchllm.finetune.loop import FinetuneLoop, LoopSettings
from scratchllm.finetune.runs import (
    source_name,
    eval_loader,
    finish_run,
    maybe_apply_lora,
    model_saver,
    plot_run,
    start_prompted_run,
)
from scratchllm.generate import generate_batch
from scratchllm.model.cpu_matmul import onednn_linears
from scratchllm.train.steps import estimate_loss
from scratchllm.utils.progress import Progress

RESPONSES_FILE = "test_responses.json"


@dataclass
class InstructResult:
    out_dir: Path
    model_dir: Path
    responses_file: Path | None
    train_loss: float
    val_loss: float
    n_train: int
    n_val: int
    n_test: int
    steps: int = 0
    interrupted: bool = False         # stopped early (Ctrl-C, SIGTERM, stop_at): resume=True
    stop_signal: int | None = None    # the signal that stopped it, if one did


def generate_responses(model: nn.Module, tokenizer: Any, entries: list[dict[str, Any]], *,
                       style: str = "alpaca", max_new_tokens: int = 256,
                       batch_size: int = 8, progress: bool = False,
                       eos_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Each entry plus ``model_response``: greedy decoding until end-of-text (book 7.7).

    ``eos_ids`` (default: the tokenizer's end of text) are every id that ends an answer,
    e.g. a Llama 3 model's ``<|eot_id|>`` as well as ``<|end_of_text|>``.

    The prompt ends with the response header, so the new tokens are the answer itself; no
    "### Response:" needs stripping afterwards as in the book. Prompts are decoded in
    left-padded batches, which gives each prompt the tokens it would get alone.
    """
    check_style(style)
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError("max_new_tokens and batch_size must be at least 1")
    keep = model.config.context_length - 1  # room for at least one new token
    results = []
    bar = Progress(len(entries), every=batch_size, unit="response", desc="test responses") \
        if progress else None
    for start in range(0, len(entries), batch_size):
        chunk = entries[start:start + batch_size]
        prompts = [encode_example(e, tokenizer, style, response_key=None)["ids"][-keep:]
                   for e in chunk]
        with onednn_linears():  # the training model's plain linears (model.cpu_matmul)
            new_ids = generate_batch(model, prompts, max_new_tokens, temperature=0.0,
                                     eos_id=list(eos_ids) if eos_ids else tokenizer.eot_id)
        for entry, ids in zip(chunk, new_ids):
            results.append({**entry, "model_response": tokenizer.decode(ids).strip()})
        if bar is not None:
            bar.advance(len(results))
    if bar is not None:
        bar.close()
    return results


class InstructTask:
    """Next-token cross-entropy on the response (and, unless masked, the prompt) tokens."""

    dropout = True

    def __init__(self, model: nn.Module, train_set: InstructionDataset, collate: Callable,
                 evals: dict[str, torch.utils.data.DataLoader], *, device: torch.device,
                 eval_batches: int, save: Callable, plot: Callable[[], None]) -> None:
        self.model, self.train_set, self.collate_fn, self.evals = model, train_set, collate, evals
        self.device, self.eval_batches, self.save_model, self.plot = device, eval_batches, save, plot
        self.size = len(train_set)

    def collate(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.collate_fn([self.train_set[i] for i in indices])

    def measure(self, batch) -> tuple[int, int]:
        trained = int((batch[1] != IGNORE_INDEX).sum())  # targets that count
        return trained, trained

    def loss_sum(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        inputs, targets = (t.to(self.device) for t in batch)
        logits = self.model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, {}

    def evaluate(self) -> dict[str, float]:
        """Mean loss of the first ``eval_batches`` batches of each split (book 7.6)."""
        return {f"{name}_loss": estimate_loss(self.model, itertools.islice(iter(data),
                                                                           self.eval_batches),
                                              device=self.device)
                for name, data in self.evals.items()}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return {}

    def score(self, event: str, record: dict) -> tuple[float, ...] | None:
        val = record.get("val_loss")
        return (-val,) if event == "eval" and val is not None else None


def check_answer_length(max_new_tokens: object) -> None:
    """Refuse a bad test-answer length before training, not after it (hours later)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer (the longest test answer), "
                          f"got {max_new_tokens!r}")


def finetune_instruct(model_dir: str | Path, data_file: str | Path, out_dir: str | Path, *,
                      epochs: int = 2, batch_size: int = 8, lr: float = 5e-5,
                      weight_decay: float = 0.1, prompt_style: str = "alpaca",
                      mask_prompt: bool = False, max_length: int | None = None,
                      lora: dict | None = None, seed: int = 123, device: str | None = "auto",
                      precision: str = "auto", eval_every: int = 5, eval_batches: int = 5,
                      max_new_tokens: int = 256, shuffle_split: bool = False,
                      generate_test: bool = True, progress: bool = True,
                      overwrite: bool = False, resume: bool = False,
                      micro_batch_size: int | None = None, warmup_steps: int = 0,
                      min_lr: float | None = None, grad_clip: float | None = None,
                      save_every: int = 0, keep_last: int = 3,
                      stop_at: int | None = None) -> InstructResult:
    """Fine-tune ``model_dir`` on instruction data; write ``out_dir`` (see ``finetune.runs``).

    Defaults are the book's recipe (7.6): 2 epochs, batch 8, AdamW lr 5e-5 (constant),
    weight decay 0.1, seed 123, evaluation on 5 batches after the first step and every 5.
    ``max_length`` defaults to the model's context length (the book's
    ``allowed_max_length=1024``). ``lora`` is a dict of ``apply_lora`` settings such as
    ``{"rank": 8, "alpha": 16}``; the saved model has the adapters merged.
    ``out_dir/test_responses.json`` gets the test answers. The loop options
    (``micro_batch_size``, ``warmup_steps``, ``min_lr``, ``grad_clip``, ``save_every``,
    ``resume``, ``stop_at``) are those of ``finetune.loop.LoopSettings``.
    """
    check_style(prompt_style)
    if generate_test:
        check_answer_length(max_new_tokens)
    settings = LoopSettings.from_options(locals())
    entries = load_instruction_data(data_file)
    train_entries, val_entries, test_entries = split_entries(entries, shuffle=shuffle_split,
                                                             seed=seed)
    setup, max_length = start_prompted_run(
        model_dir, out_dir, prompt_style=prompt_style, max_length=max_length, device=device,
        precision=precision, seed=seed, overwrite=overwrite, resume=resume)
    model, tokenizer = setup.model, setup.tokenizer
    collate = partial(instruction_collate, pad_id=tokenizer.eot_id, max_length=max_length,
                      mask_prompt=mask_prompt)
    train_set = InstructionDataset(train_entries, tokenizer, prompt_style)
    val_set = InstructionDataset(val_entries, tokenizer, prompt_style)
    evals = {"train": eval_loader(train_set, batch_size, collate),
             "val": eval_loader(val_set, batch_size, collate)}
    maybe_apply_lora(model, lora)
    task = InstructTask(model, train_set, collate, evals, device=setup.device,
                        eval_batches=eval_batches, save=model_saver(setup),
                        plot=partial(plot_run, setup))
    recipe = {"method": "instruct", "model": source_name(model_dir),
              "data_file": source_name(data_file), "prompt_style": prompt_style,
              "mask_prompt": mask_prompt, "max_length": max_length, "lora": lora,
              "shuffle_split": shuffle_split, "eval_batches": eval_batches}
    result = FinetuneLoop(setup, task, settings, recipe).run()
    last = result.last_eval
    nan = float("nan")
    if result.interrupted:
        return InstructResult(setup.out_dir, setup.out_dir / "latest", None,
                              last.get("train_loss", nan), last.get("val_loss", nan),
                              len(train_entries), len(val_entries), len(test_entries),
                              result.step, True, result.stop_signal)
    metadata = {**recipe, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "weight_decay": weight_decay, "seed": seed, "steps": result.step,
                "train_loss": last.get("train_loss"), "val_loss": last.get("val_loss")}
    saved = finish_run(setup, result, lora=lora, metadata=metadata)
    responses_path = None
    if generate_test and test_entries:
        answers = generate_responses(model, tokenizer, test_entries, style=prompt_style,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     progress=progress, eos_ids=setup.eos_ids)
        responses_path = atomic_write_json(setup.out_dir / RESPONSES_FILE, answers)
    return InstructResult(setup.out_dir, saved, responses_path, last.get("train_loss", nan),
                          last.get("val_loss", nan), len(train_entries), len(val_entries),
                          len(test_entries), result.step)
