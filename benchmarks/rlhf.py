"""Book ch. 8 on the book's preference data: reward models, then DPO vs PPO vs GRPO.

One instruction-tuned starting model (the ch. 7 path on a small from-scratch GPT, as
``benchmarks/instruct.py`` builds it: pretrain on the instruction train split, then
``finetune_instruct``; or ``--sft DIR``). The 1,100 preference pairs are split 85/5/10 in file
order (ch. 7); the 935 training pairs are dealt into two disjoint halves, A and B (each again
85/5/10 inside ``finetune_reward``/``finetune_dpo``); the 110 test pairs are seen by nothing.

1. Reward model A (the one the methods optimise) with ``finetune_reward``, beside TRL's
   ``RewardTrainer`` (``rlhf_trl.py``) on the same weights (``scratchllm export --to hf``), the
   same pairs and token ids, epochs, batch, learning rate: pairwise accuracy on the held-out
   test pairs and time. Reward model B (the judge) trains on half B the same way.
2. DPO (A's pairs), PPO and GRPO (A's prompts, rewarded by model A) start from the same model.
   Each answers the test prompts greedily; the answers get judge B's score (a gain that only
   fools A does not show there) and A's. The KL to the start is estimated from answers sampled
   at temperature 1 (k1, nats per answer). Compute is the process's CPU seconds (user + system,
   all threads), which other jobs on the machine do not inflate as they do wall time.
3. Curves: ``--results DIR`` (default ``benchmarks/results``) gets ``rlhf_reward.png`` (both
   reward models' training) and ``rlhf_rl.png`` (PPO's and GRPO's reward and KL per step).

The last line is ``rm_heldout_accuracy: OURS (TRL RewardTrainer: PEER, ratio R)``.
A CPU-sized model answers barely in language: the numbers show the pipeline and which way each
method moves, not the book's quality. The TRL peer needs ``pip install trl`` (skipped without).
Run: ``python benchmarks/rlhf.py [--sft DIR] [--rl-steps N] [--threads 2]`` (about 15 min on
2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_summary  # noqa: E402
from rlhf_trl import PAD_TOKEN, hf_scores, train_trl_reward, trl_available  # noqa: E402
from scratchllm.cli.main import main as scratchllm_cli  # noqa: E402
from scratchllm.data.instruction import split_entries  # noqa: E402
from scratchllm.data.preference import load_preference_data  # noqa: E402
from scratchllm.finetune.dpo import finetune_dpo  # noqa: E402
from scratchllm.finetune.instruct import finetune_instruct, generate_responses  # noqa: E402
from scratchllm.finetune.reward import finetune_reward  # noqa: E402
from scratchllm.finetune.reward_model import open_reward_model  # noqa: E402
from scratchllm.finetune.reward_task import RewardPairs  # noqa: E402
from scratchllm.finetune.rl import finetune_rl  # noqa: E402
from scratchllm.finetune.rl.prompts import make_prompt  # noqa: E402
from scratchllm.finetune.rl.rollout import (encode_prompt, sample_rollout, score_tokens,  # noqa: E402
                                            step_generator)
from scratchllm.train.metrics import read_metrics  # noqa: E402
from scratchllm.weights.auto import open_model  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data" / "instruction"
FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        have = set(next(l for l in text.splitlines() if l.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return "CPU flags: unknown"
    return "CPU flags: " + " ".join(f"{f}{'+' if f in have else '-'}" for f in FLAGS)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    return float((chosen > rejected).float().mean())


@torch.no_grad()
def kl_to_start(model, start, tokenizer, entries, eos_ids, max_new: int) -> float:
    """Mean over prompts of sum_t log pi(y_t) - log pi_start(y_t), y sampled from pi (T=1)."""
    prompts = [make_prompt(e, "alpaca") for e in entries]
    keep = model.config.context_length - max_new
    ids = [encode_prompt(p, tokenizer, "alpaca", keep) for p in prompts]
    total = 0.0
    for i in range(0, len(prompts), 8):
        roll = sample_rollout(model, tokenizer, prompts[i:i + 8], ids[i:i + 8],
                              max_new_tokens=max_new, temperature=1.0, eos_ids=eos_ids,
                              generator=step_generator(7, i, torch.device("cpu")))
        diff = score_tokens(model, roll, 1.0)["logprobs"] - score_tokens(start, roll, 1.0)["logprobs"]
        total += float((diff * roll.response_mask).sum())
    return total / len(prompts)


def build_sft(args, tmp: Path) -> tuple[Path, float]:
    from instruct import pretrain_small

    cpu = cpu_seconds()
    base = pretrain_small(Path(args.instructions), tmp / "base", args.pretrain_steps)
    run = finetune_instruct(base, args.instructions, tmp / "sft", epochs=args.sft_epochs,
                            lr=5e-4, max_length=256, generate_test=False, eval_every=50,
                            device="cpu", precision="fp32", progress=False)
    print(f"SFT: {args.pretrain_steps} pretraining steps + {args.sft_epochs} instruct epoch(s), "
          f"val loss {run.val_loss:.3f}", flush=True)
    return run.model_dir, cpu_seconds() - cpu


def reward_part(args, sft: Path, files: dict, test: list, tmp: Path, results: dict):
    """Part 1: reward models A and B (scratchllm) and the TRL peer on A's pairs."""
    rm_settings = dict(epochs=args.rm_epochs, lr=args.rm_lr, batch_size=8, weight_decay=0.01,
                       grad_clip=1.0, seed=123)
    scorers, curves = {}, {}
    for name in ("A", "B"):
        run, wall, cpu = timed(finetune_reward, sft, files[name], tmp / f"rm_{name}",
                               eval_every=10, device="cpu", precision="fp32", progress=False,
                               **rm_settings)
        scorers[name] = open_reward_model(run.model_dir)
        curves[f"scratchllm RM {name}"] = read_metrics(tmp / f"rm_{name}" / "metrics.jsonl")
        results["rm"][name] = {"train_pairs": run.metrics["train"]["pairs"], "wall_s": wall,
                               "cpu_s": cpu, "steps": run.steps}
    tok = scorers["A"].tokenizer
    held = RewardPairs(test, tok, "alpaca", end_id=tok.eot_id, end_ids=(tok.eot_id,),
                       limit=scorers["A"].limit)
    for name, scorer in scorers.items():
        acc = accuracy(scorer.raw_scores(held.chosen), scorer.raw_scores(held.rejected))
        results["rm"][name]["heldout_accuracy"] = acc
        row = results["rm"][name]
        print(f"scratchllm reward model {name}: {row['train_pairs']} train pairs, {row['steps']} "
              f"steps, {row['wall_s']:.0f} s wall / {row['cpu_s']:.0f} CPU-s, held-out pairwise "
              f"accuracy {acc:.3f} ({len(held)} pairs)", flush=True)
    version = trl_available() if not args.no_trl else None
    if version is None:
        print("TRL peer: skipped (`pip install trl` to run it)", flush=True)
        return scorers, curves
    hf_dir = tmp / "sft_hf"
    if scratchllm_cli(["export", str(sft), str(hf_dir), "--to", "hf"]) != 0:
        raise SystemExit("scratchllm export --to hf failed")
    train_a = split_entries(load_preference_data(files["A"]))[0]  # what finetune_reward trains on
    pairs_a = RewardPairs(train_a, tok, "alpaca", end_id=tok.eot_id, end_ids=(tok.eot_id,),
                          limit=scorers["A"].limit)
    cpu = cpu_seconds()
    model, history, wall = train_trl_reward(hf_dir, tmp / "trl", pairs_a.chosen, pairs_a.rejected,
                                            **rm_settings)
    cpu = cpu_seconds() - cpu
    pad = tok.encode_ordinary(PAD_TOKEN)[0]
    acc = accuracy(hf_scores(model, held.chosen, pad), hf_scores(model, held.rejected, pad))
    steps = max((r.get("step", 0) for r in history), default=0)
    results["rm"]["trl"] = {"version": version, "train_pairs": len(pairs_a), "wall_s": wall,
                            "cpu_s": cpu, "steps": steps, "heldout_accuracy": acc}
    curves["TRL RewardTrainer A"] = [{"event": "train", "step": r["step"], "loss": r["loss"]}
                                     for r in history if "loss" in r]
    print(f"TRL {version} RewardTrainer A: {len(pairs_a)} train pairs, {steps} steps, {wall:.0f} s "
          f"wall / {cpu:.0f} CPU-s, held-out pairwise accuracy {acc:.3f}", flush=True)
    return scorers, curves


def plot_reward(curves: dict, path: Path) -> None:
    from scratchllm.train.plots import new_figure, save_figure

    fig = new_figure(figsize=(9, 3.5))
    left, right = fig.subplots(1, 2)
    for name, rows in curves.items():
        train = [r for r in rows if r.get("event") == "train" and "loss" in r]
        left.plot([r["step"] for r in train], [r["loss"] for r in train], label=name, alpha=0.8)
        evals = [r for r in rows if r.get("event") == "eval" and "val_accuracy" in r]
        if evals:
            right.plot([r["step"] for r in evals], [r["val_accuracy"] for r in evals],
                       marker="o", markersize=3, label=name)
    left.set(xlabel="step", ylabel="pairwise loss (train batches)", title="reward models")
    right.set(xlabel="step", ylabel="validation pairwise accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_rl(runs: dict[str, Path], path: Path) -> None:
    from scratchllm.train.plots import new_figure, save_figure

    fig = new_figure(figsize=(9, 3.5))
    left, right = fig.subplots(1, 2)
    for name, out in runs.items():
        rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "train"]
        steps = [r["step"] for r in rows]
        left.plot(steps, [r["reward_mean"] for r in rows], label=name)
        right.plot(steps, [r["kl"] for r in rows], label=name)
    left.set(xlabel="step", ylabel="reward model A score of the rollouts (mean)")
    right.set(xlabel="step", ylabel="KL to start (nats/answer)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def align_part(args, sft: Path, files: dict, test: list, tmp: Path, scorers: dict,
               results: dict) -> dict[str, list[str]]:
    """Part 2: DPO, PPO, GRPO from the start; held-out scores under judge B and RM A, KL."""
    common = dict(device="cpu", precision="fp32", progress=False)
    rl = dict(max_new_tokens=args.max_new_tokens, max_steps=args.rl_steps, test_responses=False,
              kl_coef=args.kl_coef, lr=args.rl_lr, **common)
    spent = {"start": (0.0, 0.0)}
    _, *spent["dpo"] = timed(finetune_dpo, sft, files["A"], tmp / "dpo", epochs=1, lr=args.dpo_lr,
                             beta=0.1, batch_size=8, eval_every=50, generate_test=False, **common)
    _, *spent["ppo"] = timed(finetune_rl, sft, files["A"], tmp / "ppo", reward_model=tmp / "rm_A",
                             algorithm="ppo", rollout_batch=8, minibatch=4, ppo_epochs=2, **rl)
    _, *spent["grpo"] = timed(finetune_rl, sft, files["A"], tmp / "grpo",
                              reward_model=tmp / "rm_A", algorithm="grpo", rollout_batch=4,
                              group_size=4, minibatch=8, ppo_epochs=2, **rl)
    plot_rl({"PPO": tmp / "ppo", "GRPO": tmp / "grpo"}, args.results / "rlhf_rl.png")
    start = open_model(sft, device="cpu")
    samples = {}
    for name, path in {"start": sft, "dpo": tmp / "dpo", "ppo": tmp / "ppo",
                       "grpo": tmp / "grpo"}.items():
        loaded = open_model(path, device="cpu")
        answers = generate_responses(loaded.model, loaded.tokenizer, test,
                                     max_new_tokens=args.max_new_tokens, eos_ids=loaded.eos_ids)
        texts = [a["model_response"] for a in answers]
        kl = 0.0 if name == "start" else kl_to_start(loaded.model, start.model, loaded.tokenizer,
                                                     test, loaded.eos_ids, args.max_new_tokens)
        wall, cpu = spent[name]
        results["methods"][name] = {"judge_B": float(scorers["B"].score(test, texts).mean()),
                                    "rm_A": float(scorers["A"].score(test, texts).mean()),
                                    "kl": kl, "wall_s": wall, "cpu_s": cpu}
        samples[name] = texts[:3]
    return samples


def report(results: dict, samples: dict, prompts: list) -> None:
    base = results["methods"]["start"]["judge_B"]
    print("\n| method | judge B score (held-out RM) | RM A score (optimised) | KL to start "
          "(nats/answer) | wall s | CPU s | judge-B gain per CPU-minute |")
    print("|---|---|---|---|---|---|---|")
    best, best_rate = None, float("-inf")
    for name, row in results["methods"].items():
        rate = (row["judge_B"] - base) / (row["cpu_s"] / 60) if row["cpu_s"] else 0.0
        row["gain_per_cpu_minute"] = rate
        if name != "start" and rate > best_rate:
            best, best_rate = name, rate
        print(f"| {name} | {row['judge_B']:+.3f} | {row['rm_A']:+.3f} | {row['kl']:.3f} | "
              f"{row['wall_s']:.0f} | {row['cpu_s']:.0f} | {rate:+.4f} |")
    print(f"\nmost judge-B score gained per CPU-second: {best} ({best_rate / 60:+.5f}/CPU-s)")
    print("\nsample answers (greedy, first held-out prompts):")
    for i, prompt in enumerate(prompts):
        print(f"  [{i}] {prompt['instruction'][:70]!r}")
        for name, texts in samples.items():
            print(f"      {name:5}: {texts[i][:90]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", help="instruction-tuned model (default: build a small one)")
    parser.add_argument("--instructions", default=str(SHARED / "instruction-data.json"))
    parser.add_argument("--preferences",
                        default=str(SHARED / "instruction-data-with-preference.json"))
    parser.add_argument("--pretrain-steps", type=int, default=100)
    parser.add_argument("--sft-epochs", type=int, default=1)
    parser.add_argument("--rm-epochs", type=int, default=2)
    parser.add_argument("--rm-lr", type=float, default=3e-4)
    parser.add_argument("--dpo-lr", type=float, default=5e-5)
    parser.add_argument("--rl-steps", type=int, default=20)
    parser.add_argument("--rl-lr", type=float, default=1e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL peer")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="folder for rlhf_*.png (and rlhf.json)")
    parser.add_argument("--workdir", type=Path, help="keep the models here (default: a temporary "
                        "folder under /var/tmp, removed at the end)")
    parser.add_argument("--limit", type=int, help="use only the first N entries of each file "
                        "(a quick check that everything runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.results.mkdir(parents=True, exist_ok=True)
    print(machine_summary(), flush=True)
    print(cpu_flags(), flush=True)
    results: dict = {"rm": {}, "methods": {}, "settings": {k: str(v) for k, v in vars(args).items()}}
    wall0 = time.perf_counter()
    # Not under /tmp: a shared machine's clean-ups of /tmp/tmp* took a run's models away once.
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="scratchllm-rlhf-") as tmp:
        tmp = Path(tmp)
        if args.workdir is not None:
            tmp = args.workdir
            tmp.mkdir(parents=True, exist_ok=True)
        if args.limit:
            for key in ("instructions", "preferences"):
                entries = json.loads(Path(getattr(args, key)).read_text(encoding="utf-8"))
                subset = tmp / f"{key}.json"
                subset.write_text(json.dumps(entries[:args.limit]), encoding="utf-8")
                setattr(args, key, str(subset))
        sft = args.sft
        if sft is None:
            sft, results["sft_cpu_s"] = build_sft(args, tmp)
        train, _, test = split_entries(load_preference_data(args.preferences))
        files = {}
        for name, half in (("A", train[0::2]), ("B", train[1::2])):
            files[name] = tmp / f"pairs_{name}.json"
            files[name].write_text(json.dumps(half), encoding="utf-8")
        scorers, curves = reward_part(args, sft, files, test, tmp, results)
        plot_reward(curves, args.results / "rlhf_reward.png")
        samples = align_part(args, sft, files, test, tmp, scorers, results)
    report(results, samples, test[:3])
    results["samples"], results["wall_s"] = samples, time.perf_counter() - wall0
    (args.results / "rlhf.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"\nwhole benchmark: {results['wall_s']:.0f} s wall; curves in "
          f"{args.results / 'rlhf_reward.png'} and {args.results / 'rlhf_rl.png'}")
    ours = results["rm"]["A"]["heldout_accuracy"]
    peer = results["rm"].get("trl", {}).get("heldout_accuracy")
    if peer is None:
        print(f"rm_heldout_accuracy: {ours:.3f} (TRL RewardTrainer: not run, ratio n/a)")
    else:
        ratio = ours / peer if peer else float("inf")
        print(f"rm_heldout_accuracy: {ours:.3f} (TRL RewardTrainer: {peer:.3f}, ratio {ratio:.2f})")


if __name__ == "__main__":
    main()
