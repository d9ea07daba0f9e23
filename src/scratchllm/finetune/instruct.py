"""Instruction fine-tuning (book ch. 7): teach a pretrained GPT to answer instructions.

``finetune_instruct`` is the chapter as one call: split the data 85/5/10 (7.2), batch it
with the masked collate (7.3), train with AdamW for two epochs (7.6), save the model, then
answer every test instruction greedily and store the answers beside the inputs (7.7) for
scoring with ``scratchllm evaluate judge`` (7.8).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from scratchllm.utils.atomic import atomic_write_json
from scratchllm.data.instruction import (
    InstructionDataset,
    check_style,
    encode_example,
    instruction_collate,
    load_instruction_data,
    split_entries,
)
from scratchllm.errors import ConfigError
from scratchllm.finetune.runs import (
    eval_loader,
    finish_run,
    maybe_apply_lora,
    start_run,
    train_epochs,
    train_loader,
)
from scratchllm.generate import generate_batch
from scratchllm.train.steps import batch_loss, estimate_loss
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


def generate_responses(model: nn.Module, tokenizer: Any, entries: list[dict[str, Any]], *,
                       style: str = "alpaca", max_new_tokens: int = 256,
                       batch_size: int = 8, progress: bool = False) -> list[dict[str, Any]]:
    """Each entry plus ``model_response``: greedy decoding until end-of-text (book 7.7).

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
        new_ids = generate_batch(model, prompts, max_new_tokens, temperature=0.0,
                                 eos_id=tokenizer.eot_id)
        for entry, ids in zip(chunk, new_ids):
            results.append({**entry, "model_response": tokenizer.decode(ids).strip()})
        if bar is not None:
            bar.advance(len(results))
    if bar is not None:
        bar.close()
    return results


def finetune_instruct(model_dir: str | Path, data_file: str | Path, out_dir: str | Path, *,
                      epochs: int = 2, batch_size: int = 8, lr: float = 5e-5,
                      weight_decay: float = 0.1, prompt_style: str = "alpaca",
                      mask_prompt: bool = False, max_length: int | None = None,
                      lora: dict | None = None, seed: int = 123, device: str | None = "auto",
                      precision: str = "auto", eval_every: int = 5, eval_batches: int = 5,
                      max_new_tokens: int = 256, shuffle_split: bool = False,
                      generate_test: bool = True, progress: bool = True,
                      overwrite: bool = False) -> InstructResult:
    """Fine-tune ``model_dir`` on instruction data; write ``out_dir`` (see ``finetune.runs``).

    Defaults are the book's recipe (7.6): 2 epochs, batch 8, AdamW lr 5e-5, weight decay 0.1,
    seed 123, evaluation on 5 batches every 5 steps. ``max_length`` defaults to the model's
    context length (the book's ``allowed_max_length=1024``). ``lora`` is a dict of
    ``apply_lora`` settings such as ``{"rank": 8, "alpha": 16}``; the saved model has the
    adapters merged. ``out_dir/test_responses.json`` gets the test answers.
    """
    check_style(prompt_style)
    entries = load_instruction_data(data_file)
    train_entries, val_entries, test_entries = split_entries(entries, shuffle=shuffle_split,
                                                             seed=seed)
    setup = start_run(model_dir, out_dir, device=device, precision=precision, seed=seed,
                      overwrite=overwrite)
    model, tokenizer = setup.model, setup.tokenizer
    context = model.config.context_length
    max_length = min(max_length or context, context)
    collate = partial(instruction_collate, pad_id=tokenizer.eot_id, max_length=max_length,
                      mask_prompt=mask_prompt)
    train_set = InstructionDataset(train_entries, tokenizer, prompt_style)
    val_set = InstructionDataset(val_entries, tokenizer, prompt_style)
    loader = train_loader(train_set, batch_size, collate, seed)
    train_eval = eval_loader(train_set, batch_size, collate)
    val_eval = eval_loader(val_set, batch_size, collate)
    maybe_apply_lora(model, lora)

    def step_fn(batch):
        inputs, targets = (t.to(setup.device) for t in batch)
        return batch_loss(model, inputs, targets), {}, int((targets != -100).sum())

    def eval_fn() -> dict[str, float]:
        return {name: estimate_loss(model, itertools.islice(iter(data), eval_batches),
                                    device=setup.device)
                for name, data in (("train_loss", train_eval), ("val_loss", val_eval))}

    last = train_epochs(setup, loader, epochs=epochs, lr=lr, weight_decay=weight_decay,
                        step_fn=step_fn, eval_fn=eval_fn, eval_every=eval_every,
                        progress=progress)
    settings = {"method": "instruct", "prompt_style": prompt_style, "mask_prompt": mask_prompt,
                "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "weight_decay": weight_decay, "seed": seed, "lora": lora,
                "train_loss": last.get("train_loss"), "val_loss": last.get("val_loss")}
    saved = finish_run(setup, lora=lora, metadata=settings)
    responses_path = None
    if generate_test and test_entries:
        answers = generate_responses(model, tokenizer, test_entries, style=prompt_style,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     progress=progress)
        responses_path = atomic_write_json(setup.out_dir / RESPONSES_FILE, answers)
    return InstructResult(setup.out_dir, saved, responses_path, last.get("train_loss", float("nan")),
                          last.get("val_loss", float("nan")), len(train_entries),
                          len(val_entries), len(test_entries))

