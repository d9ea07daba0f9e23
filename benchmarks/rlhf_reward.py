"""Part 1 of ``benchmarks/rlhf.py``: reward models, and TRL's ``RewardTrainer`` beside them.

* The headline reward model trains on the whole training split of the preference file (the
  first 85%, 935 pairs; ``finetune_reward`` splits the file exactly as the benchmark does, so
  its test split *is* the 110 held-out pairs), with the recipe's pooling (``--rm-pooling``),
  as an ensemble of ``--rm-ensemble`` seeds (123, 124, ...; member 1 is the single model).
* The same run with the end-token readout (``pooling="last"``), unless ``--rm-pooling last``
  already is that: the apples-to-apples twin of TRL, which reads the last token.
* TRL's ``RewardTrainer`` on the same exported weights and token ids, epochs, batch, rate.
* Reward model A (optimised by PPO/GRPO) and judge B, each on one half of the training pairs.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from rlhf_trl import PAD_TOKEN, hf_scores, train_trl_reward, trl_available
from scratchllm.cli.main import main as scratchllm_cli
from scratchllm.data.instruction import split_entries
from scratchllm.data.preference import load_preference_data
from scratchllm.finetune.reward import finetune_reward
from scratchllm.finetune.reward_model import RewardScorer, open_reward_model
from scratchllm.finetune.reward_task import RewardPairs
from scratchllm.train.metrics import read_metrics


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def heldout_accuracy(scorer: RewardScorer, held: RewardPairs) -> float:
    chosen = scorer.raw_scores(held.chosen, 16, held.chosen_starts)
    rejected = scorer.raw_scores(held.rejected, 16, held.rejected_starts)
    return float((chosen > rejected).float().mean())


def rm_settings(args) -> dict:
    return dict(epochs=args.rm_epochs, lr=args.rm_lr, batch_size=args.rm_batch,
                weight_decay=args.rm_weight_decay, grad_clip=1.0, seed=123,
                train_mode=args.rm_train_mode)


def reused_run(out: Path) -> SimpleNamespace:
    """What ``reward_part`` reads of a finished ``finetune_reward`` run, from its results.json."""
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    print(f"reusing {out} (--reuse-rm)", flush=True)
    return SimpleNamespace(model_dir=Path(saved["model_dir"]), steps=saved["steps"],
                           seconds=saved["seconds"], metrics={"train": saved["train"]})


def reward_part(args, sft: Path, files: dict, test: list, tmp: Path, results: dict):
    """Train every reward model of part 1; returns ({name: scorer}, {curve name: rows})."""
    settings = rm_settings(args)
    runs = {"full": (files["full"], args.rm_pooling), "A": (files["A"], args.rm_pooling),
            "B": (files["B"], args.rm_pooling)}
    if args.rm_pooling != "last" and not args.no_last:
        runs["full-last"] = (files["full"], "last")
    ensembles = {name: args.rm_ensemble if name == "full" else 1 for name in runs}
    scorers, curves = {}, {}
    held = None
    for name, (data, pooling) in runs.items():
        out = tmp / f"rm_{name}"
        if args.reuse_rm and (out / "results.json").is_file():  # an earlier run's, as it was
            run = reused_run(out)
            wall, cpu = run.seconds, float("nan")
        else:
            run, wall, cpu = timed(finetune_reward, sft, data, out, pooling=pooling,
                                   eval_every=20, device="cpu", precision="fp32",
                                   progress=False, overwrite=True, ensemble=ensembles[name],
                                   **settings)
        scorers[name] = scorer = open_reward_model(run.model_dir)
        if held is None:
            tok = scorer.tokenizer
            held = RewardPairs(test, tok, scorer.prompt_style, end_id=tok.eot_id,
                               end_ids=(tok.eot_id,), limit=scorer.limit)
        acc = heldout_accuracy(scorer, held)
        results["rm"][name] = row = {
            "pooling": pooling, "train_pairs": run.metrics["train"]["pairs"], "wall_s": wall,
            "cpu_s": cpu, "steps": run.steps, "heldout_accuracy": acc,
            "train_accuracy": run.metrics["train"]["accuracy"]}
        members = json.loads((out / "results.json").read_text(encoding="utf-8"))[
            "settings"].get("members") or []
        if members:  # an ensemble: its members alone (member 1 has the plain run's seed)
            row["members_heldout_accuracy"] = [m["test_accuracy"] for m in members]
        if name in ("full", "full-last"):
            metrics = out / ("members/member-1" if members else "") / "metrics.jsonl"
            curves[f"scratchllm ({pooling})"] = read_metrics(metrics)
        kind = f"{pooling}, ensemble of {len(members)}" if members else pooling
        print(f"scratchllm reward model {name} ({kind}): {row['train_pairs']} train pairs, "
              f"{row['steps']} steps, {wall:.0f} s wall / {cpu:.0f} CPU-s, train accuracy "
              f"{row['train_accuracy']:.3f}, held-out pairwise accuracy {acc:.3f} "
              f"({len(held)} pairs)" + (" (members alone: " + " / ".join(
                  f"{a:.3f}" for a in row["members_heldout_accuracy"]) + ")" if members else ""),
              flush=True)
    if args.no_trl:
        print("TRL peer: skipped (--no-trl)", flush=True)
        return scorers, curves
    version = trl_available()
    if version is None:
        print("TRL peer: skipped (`pip install trl` to run it)", flush=True)
        return scorers, curves
    hf_dir = tmp / "sft_hf"
    if scratchllm_cli(["export", str(sft), str(hf_dir), "--to", "hf", "--overwrite"]) != 0:
        raise SystemExit("scratchllm export --to hf failed")
    tok = scorers["full"].tokenizer
    train = split_entries(load_preference_data(files["full"]))[0]  # what "full" trains on
    pairs = RewardPairs(train, tok, "alpaca", end_id=tok.eot_id, end_ids=(tok.eot_id,),
                        limit=scorers["full"].limit)
    trl_settings = {k: v for k, v in settings.items() if k != "train_mode"}
    cpu = cpu_seconds()
    model, history, wall = train_trl_reward(hf_dir, tmp / "trl", pairs.chosen, pairs.rejected,
                                            **trl_settings)
    cpu = cpu_seconds() - cpu
    pad = tok.encode_ordinary(PAD_TOKEN)[0]
    acc = float((hf_scores(model, held.chosen, pad) > hf_scores(model, held.rejected, pad))
                .float().mean())
    steps = max((r.get("step", 0) for r in history), default=0)
    results["rm"]["trl"] = {"version": version, "train_pairs": len(pairs), "wall_s": wall,
                            "cpu_s": cpu, "steps": steps, "heldout_accuracy": acc}
    curves["TRL RewardTrainer (last)"] = [{"event": "train", "step": r["step"], "loss": r["loss"]}
                                          for r in history if "loss" in r]
    print(f"TRL {version} RewardTrainer (last token): {len(pairs)} train pairs, {steps} steps, "
          f"{wall:.0f} s wall / {cpu:.0f} CPU-s, held-out pairwise accuracy {acc:.3f}", flush=True)
    return scorers, curves


def plot_reward(curves: dict, path: Path) -> None:
    from scratchllm.train.plots import new_figure, save_figure

    fig = new_figure(figsize=(9, 3.5))
    left, right = fig.subplots(1, 2)
    for name, rows in curves.items():
        train = [r for r in rows if r.get("event") == "train" and "loss" in r]
        steps = [r["step"] for r in train]
        losses = torch.tensor([r["loss"] for r in train])
        if len(losses) >= 10:  # a 10-step running mean: single batches of 8 pairs are noisy
            losses = torch.nn.functional.avg_pool1d(losses[None], 10, 1)[0]
            steps = steps[9:]
        left.plot(steps, losses.tolist(), label=name, alpha=0.8)
        evals = [r for r in rows if r.get("event") == "eval" and "val_accuracy" in r]
        if evals:
            right.plot([r["step"] for r in evals], [r["val_accuracy"] for r in evals],
                       marker="o", markersize=3, label=name)
    left.set(xlabel="step", ylabel="pairwise loss (10-step mean)",
             title="reward models on the 935 training pairs")
    right.set(xlabel="step", ylabel="validation pairwise accuracy (55 pairs)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)
