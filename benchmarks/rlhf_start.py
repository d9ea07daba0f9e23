"""The starting model of ``benchmarks/rlhf.py``: ``scratchllm pretrain`` then ``finetune instruct``.

Pretraining text: the instruction data's *training* split (the first 85%, ch. 7's order),
each entry in the Alpaca format with its answer, plus the preference file's other answer
(the polite or impolite rewrite) of the same training entries; optionally tiny Shakespeare
in front. No test entry's text is seen. Then one ch. 7 instruction-tuning epoch.

Both stages are cached in the work folder under a name made of their settings, so a rerun
with the same settings skips them (``cached start model ...`` in the output).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from scratchllm.data.instruction import format_example, format_prompt, load_instruction_data, split_entries
from scratchllm.data.preference import load_preference_data
from scratchllm.finetune.instruct import finetune_instruct
from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import train

DONE = "start_model.json"  # written last: a folder without it is an interrupted build


def pretrain_text(instructions: str, preferences: str, shakespeare: str | None) -> str:
    """The training split's texts, one document per answer, ``<|endoftext|>`` between them."""
    train = split_entries(load_instruction_data(instructions))[0]
    docs = [format_example(e) for e in train]
    known = {(e["instruction"], e.get("input", ""), e["output"]) for e in train}
    for entry in split_entries(load_preference_data(preferences))[0]:
        for key in ("chosen", "rejected"):
            if (entry["instruction"], entry.get("input", ""), entry[key]) not in known:
                docs.append(format_prompt(entry) + entry[key])
    text = "<|endoftext|>".join(docs)
    if shakespeare:
        text = Path(shakespeare).read_text(encoding="utf-8") + "<|endoftext|>" + text
    return text


def build_start(work: Path, *, instructions: str, preferences: str, shakespeare: str | None,
                model: dict[str, Any], context: int, steps: int, batch: int, lr: float,
                sft_epochs: int, sft_lr: float) -> tuple[Path, float, bool]:
    """(instruction-tuned model dir, seconds spent, whether it came from the cache)."""
    settings = {"instructions": str(instructions), "preferences": str(preferences),
                "shakespeare": shakespeare, "model": model, "context": context, "steps": steps,
                "batch": batch, "lr": lr, "sft_epochs": sft_epochs, "sft_lr": sft_lr}
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
    corpus.write_text(pretrain_text(instructions, preferences, shakespeare), encoding="utf-8")
    config = TrainConfig(data=str(corpus), model=dict(model), context_length=context,
                         max_steps=steps, epochs=None, batch_size=batch, micro_batch_size=batch,
                         lr=lr, warmup_steps=20, train_ratio=0.95, eval_every=max(steps // 4, 1),
                         eval_batches=4, sample_tokens=0, out_dir=str(folder / "pretrain"),
                         overwrite=True, device="cpu", precision="fp32")
    result = train(config)
    if result.interrupted:
        raise SystemExit(f"pretraining stopped at step {result.step}; the start model is not cached")
    run = finetune_instruct(result.run_dir, instructions, folder / "sft", epochs=sft_epochs,
                            lr=sft_lr, max_length=context, generate_test=False, eval_every=50,
                            device="cpu", precision="fp32", progress=False, overwrite=True)
    if run.interrupted:
        raise SystemExit("instruction tuning stopped; the start model is not cached")
    summary = (f"{model['n_layers']} layers x {model['emb_dim']} wide, pretrained {steps} steps "
               f"(val loss {result.val_loss:.3f}), instruction-tuned {sft_epochs} epoch(s) "
               f"(val loss {run.val_loss:.3f})")
    print(f"start model: {summary}", flush=True)
    done.write_text(json.dumps({"sft": str(run.model_dir), "summary": summary,
                                "settings": settings}), encoding="utf-8")
    return Path(run.model_dir), time.perf_counter() - begin, False
