"""The starting model of ``benchmarks/rlhf.py``: ``scratchllm pretrain`` then ``finetune instruct``.

Pretraining text: the instruction data's *training* split (the first 85%, ch. 7's order),
each entry in the Alpaca format with its answer, plus the preference file's other answer
(the polite or impolite rewrite) of the same training entries; optionally tiny Shakespeare
in front. No test entry's text is seen. Then one ch. 7 instruction-tuning epoch.

``skip`` (cross-validation, ``rlhf_cv.py``): indices of training entries left out of both
stages, so a fold's pairs are unseen text for the reward model built on that start.

Both stages are cached in the work folder under a name made of their settings, so a rerun
with the same settings skips them (``cached start model ...`` in the output).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from scratchllm.data.instruction import format_example, format_prompt, load_instruction_data, split_entries
from scratchllm.data.preference import load_preference_data
from scratchllm.finetune.instruct import finetune_instruct
from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import train

DONE = "start_model.json"  # written last: a folder without it is an interrupted build


def train_split_file(rest: list, spare: list, path: Path) -> Path:
    """Write ``rest`` + the fewest ``spare`` entries so that ``split_entries`` of the file
    (85/5/10 in file order) gives exactly ``rest`` as its training split."""
    n = len(rest)
    total = next(t for t in range(n, 3 * n + 3) if int(t * 0.85) == n)
    if total - n > len(spare):
        raise ValueError(f"{len(spare)} spare entries cannot fill the {total - n} val/test rows")
    path.write_text(json.dumps(list(rest) + list(spare[:total - n])), encoding="utf-8")
    return path


def pretrain_text(instructions: str, preferences: str, shakespeare: str | None,
                  books: Sequence[str] = (), skip: Collection[int] = ()) -> str:
    """The training split's texts, one document per answer, ``<|endoftext|>`` between them
    (entries whose index is in ``skip`` left out); ``books`` and tiny Shakespeare in front."""
    train = split_entries(load_instruction_data(instructions))[0]
    docs = [format_example(e) for i, e in enumerate(train) if i not in skip]
    known = {(e["instruction"], e.get("input", ""), e["output"]) for e in train}
    for i, entry in enumerate(split_entries(load_preference_data(preferences))[0]):
        if i in skip:
            continue
        for key in ("chosen", "rejected"):
            if (entry["instruction"], entry.get("input", ""), entry[key]) not in known:
                docs.append(format_prompt(entry) + entry[key])
    text = "<|endoftext|>".join(docs)
    for book in [*books, *([shakespeare] if shakespeare else [])]:
        text = Path(book).read_text(encoding="utf-8") + "<|endoftext|>" + text
    return text


def build_start(work: Path, *, instructions: str, preferences: str, shakespeare: str | None,
                model: dict[str, Any], context: int, steps: int, batch: int, lr: float,
                sft_epochs: int, sft_lr: float, books: Sequence[str] = (),
                skip: Collection[int] = (), device: str = "cpu") -> tuple[Path, float, bool]:
    """(instruction-tuned model dir, seconds spent, whether it came from the cache)."""
    settings = {"instructions": str(instructions), "preferences": str(preferences),
                "shakespeare": shakespeare, "model": model, "context": context, "steps": steps,
                "batch": batch, "lr": lr, "sft_epochs": sft_epochs, "sft_lr": sft_lr}
    if books or skip:  # only then: the default start model keeps its cache key
        settings.update(books=[str(b) for b in books], skip=sorted(skip))
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = work / f"start-{key}"
    done = folder / DONE
    if done.is_file():
        info = json.loads(done.read_text(encoding="utf-8"))
        print(f"cached start model {folder} ({info['summary']})", flush=True)
        return Path(info["sft"]), 0.0, True
    begin = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "pretrain.txt"
    corpus.write_text(pretrain_text(instructions, preferences, shakespeare, books, skip),
                      encoding="utf-8")
    config = TrainConfig(data=str(corpus), model=dict(model), context_length=context,
                         max_steps=steps, epochs=None, batch_size=batch, micro_batch_size=batch,
                         lr=lr, warmup_steps=20, train_ratio=0.95, eval_every=max(steps // 4, 1),
                         eval_batches=4, sample_tokens=0, out_dir=str(folder / "pretrain"),
                         overwrite=True, device=device, precision="fp32")
    result = train(config)
    if result.interrupted:
        raise SystemExit(f"pretraining stopped at step {result.step}; the start model is not cached")
    if skip:  # instruction-tune on the training split without the skipped entries
        entries = load_instruction_data(instructions)
        train_part = split_entries(entries)[0]
        instructions = str(train_split_file(
            [e for i, e in enumerate(train_part) if i not in skip],
            [e for i, e in enumerate(train_part) if i in skip], folder / "instructions.json"))
    run = finetune_instruct(result.run_dir, instructions, folder / "sft", epochs=sft_epochs,
                            lr=sft_lr, max_length=context, generate_test=False, eval_every=50,
                            device=device, precision="fp32", progress=False, overwrite=True)
    if run.interrupted:
        raise SystemExit("instruction tuning stopped; the start model is not cached")
    summary = (f"{model['n_layers']} layers x {model['emb_dim']} wide, pretrained {steps} steps "
               f"(val loss {result.val_loss:.3f}), instruction-tuned {sft_epochs} epoch(s) "
               f"(val loss {run.val_loss:.3f})")
    print(f"start model: {summary}", flush=True)
    done.write_text(json.dumps({"sft": str(run.model_dir), "summary": summary,
                                "settings": settings}), encoding="utf-8")
    return Path(run.model_dir), time.perf_counter() - begin, False
