"""Book ch. 8 on the book's preference data: reward models, then DPO vs PPO vs GRPO.

From one instruction-tuned starting model (the ch. 7 path on a small from-scratch GPT, as
``benchmarks/instruct.py`` builds it, unless ``--sft DIR`` is given):

1. The preference file is split 85/5/10 in file order (ch. 7). The training pairs are dealt
   into two disjoint halves, A and B. Reward model A (the one the methods optimise) trains on
   A, reward model B (the judge) on B; each one's pairwise accuracy is measured on the
   held-out test pairs neither saw.
2. DPO (on A's pairs), PPO and GRPO (on A's prompts, against reward model A) each start from
   the same model. On the held-out test prompts each model answers greedily; the answers are
   scored by judge B (a gain that only fools A does not show there) and by A, and the KL to
   the starting model is estimated from answers sampled at temperature 1 (k1, nats/answer).
3. ``--curves PNG`` draws PPO's and GRPO's reward and KL per step.

This is a first version: a CPU-sized model whose answers are barely language, so the numbers
show that the pipeline runs and which way each method moves, not the book's quality.
Run: ``python benchmarks/rlhf.py [--sft DIR] [--rl-steps N] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_summary  # noqa: E402
from scratchllm.data.instruction import split_entries  # noqa: E402
from scratchllm.data.preference import load_preference_data  # noqa: E402
from scratchllm.finetune.dpo import finetune_dpo  # noqa: E402
from scratchllm.finetune.instruct import finetune_instruct, generate_responses  # noqa: E402
from scratchllm.finetune.reward import finetune_reward  # noqa: E402
from scratchllm.finetune.reward_model import open_reward_model  # noqa: E402
from scratchllm.finetune.rl import finetune_rl  # noqa: E402
from scratchllm.finetune.rl.prompts import make_prompt  # noqa: E402
from scratchllm.finetune.rl.rollout import (  # noqa: E402
    encode_prompt, sample_rollout, score_tokens, step_generator)
from scratchllm.train.metrics import read_metrics  # noqa: E402
from scratchllm.weights.auto import open_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "instruction"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def pair_accuracy(scorer, pairs: list[dict]) -> float:
    """Share of held-out pairs whose chosen answer the reward model scores higher."""
    chosen = scorer.score(pairs, [p["chosen"] for p in pairs])
    rejected = scorer.score(pairs, [p["rejected"] for p in pairs])
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
        diff = (score_tokens(model, roll, 1.0)["logprobs"]
                - score_tokens(start, roll, 1.0)["logprobs"])
        total += float((diff * roll.response_mask).sum())
    return total / len(prompts)


def plot_curves(runs: dict[str, Path], path: Path) -> None:
    from scratchllm.train.plots import new_figure, save_figure

    fig = new_figure(figsize=(8, 3.5))
    left, right = fig.subplots(1, 2)
    for name, out in runs.items():
        rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "train"]
        steps = [r["step"] for r in rows]
        left.plot(steps, [r["reward_mean"] for r in rows], label=name)
        right.plot(steps, [r["kl"] for r in rows], label=name)
    left.set(xlabel="step", ylabel="reward model A score (mean)")
    right.set(xlabel="step", ylabel="KL to start (nats/answer)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", help="instruction-tuned model (default: build a small one)")
    parser.add_argument("--instructions", default=str(SHARED / "instruction-data.json"))
    parser.add_argument("--preferences",
                        default=str(SHARED / "instruction-data-with-preference.json"))
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--rl-steps", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="DPO, PPO and GRPO learning rate (a small model needs a big one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--curves", help="write PPO/GRPO reward and KL curves to this PNG")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--limit", type=int, help="use only the first N entries of each file "
                        "(a quick check that everything runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_summary(), flush=True)
    common = dict(device="cpu", precision="fp32", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.limit:
            for key in ("instructions", "preferences"):
                entries = json.loads(Path(getattr(args, key)).read_text(encoding="utf-8"))
                subset = tmp / f"{key}.json"
                subset.write_text(json.dumps(entries[:args.limit]), encoding="utf-8")
                setattr(args, key, str(subset))
        sft = args.sft
        if sft is None:
            from instruct import pretrain_small

            base = pretrain_small(Path(args.instructions), tmp / "base", args.pretrain_steps)
            run, sft_s = timed(finetune_instruct, base, args.instructions, tmp / "sft", epochs=1,
                               lr=5e-4, max_length=256, generate_test=False, eval_every=50,
                               **common)
            sft = run.model_dir
            print(f"SFT: 1 epoch, {sft_s:.0f} s, val loss {run.val_loss:.3f}", flush=True)
        pairs = load_preference_data(args.preferences)
        train, _, test = split_entries(pairs)
        halves = {"A": train[0::2], "B": train[1::2]}
        files = {}
        for name, half in halves.items():
            files[name] = tmp / f"pairs_{name}.json"
            files[name].write_text(json.dumps(half), encoding="utf-8")
        rms, results = {}, {"rm": {}, "methods": {}}
        for name, path in files.items():
            rm, secs = timed(finetune_reward, sft, path, tmp / f"rm_{name}", epochs=2, lr=1e-4,
                             batch_size=8, eval_every=50, **common)
            rms[name] = open_reward_model(rm.model_dir)
            acc = pair_accuracy(rms[name], test)
            results["rm"][name] = {"pairs": len(halves[name]), "seconds": round(secs, 1),
                                   "heldout_accuracy": acc}
            print(f"reward model {name}: {len(halves[name])} pairs, {secs:.0f} s, held-out "
                  f"pairwise accuracy {acc:.3f}", flush=True)
        rl = dict(max_new_tokens=args.max_new_tokens, max_steps=args.rl_steps,
                  test_responses=False, kl_coef=0.05, lr=args.lr, **common)
        runs: dict[str, Path] = {}
        seconds = {"start": 0.0}
        _, seconds["dpo"] = timed(finetune_dpo, sft, files["A"], tmp / "dpo", epochs=1,
                                  lr=args.lr, batch_size=8, eval_every=50, **common)
        _, seconds["ppo"] = timed(finetune_rl, sft, files["A"], tmp / "ppo",
                                  reward_model=tmp / "rm_A", algorithm="ppo", rollout_batch=8,
                                  minibatch=4, ppo_epochs=2, **rl)
        _, seconds["grpo"] = timed(finetune_rl, sft, files["A"], tmp / "grpo",
                                   reward_model=tmp / "rm_A", algorithm="grpo", rollout_batch=4,
                                   group_size=4, minibatch=8, ppo_epochs=2, **rl)
        runs = {"PPO": tmp / "ppo", "GRPO": tmp / "grpo"}
        if args.curves:
            plot_curves(runs, Path(args.curves))
        start = open_model(sft, device="cpu")
        models = {"start": sft, "dpo": tmp / "dpo", "ppo": tmp / "ppo", "grpo": tmp / "grpo"}
        samples = {}
        for name, path in models.items():
            loaded = open_model(path, device="cpu")
            answers = generate_responses(loaded.model, loaded.tokenizer, test,
                                         max_new_tokens=args.max_new_tokens,
                                         eos_ids=loaded.eos_ids)
            texts = [a["model_response"] for a in answers]
            score_b = float(rms["B"].score(test, texts).mean())
            score_a = float(rms["A"].score(test, texts).mean())
            kl = 0.0 if name == "start" else kl_to_start(
                loaded.model, start.model, loaded.tokenizer, test, loaded.eos_ids,
                args.max_new_tokens)
            results["methods"][name] = {"judge_B": score_b, "train_rm_A": score_a, "kl": kl,
                                        "seconds": round(seconds[name], 1)}
            samples[name] = texts[:2]
            print(f"{name:6} judge B {score_b:+.3f} | RM A {score_a:+.3f} | KL {kl:7.3f} | "
                  f"{seconds[name]:6.0f} s", flush=True)
    base_b = results["methods"]["start"]["judge_B"]
    print("\n| method | judge B (held-out RM) | RM A (optimised) | KL to start | seconds | "
          "gain per minute |")
    print("|---|---|---|---|---|---|")
    for name, row in results["methods"].items():
        gain = (row["judge_B"] - base_b) / (row["seconds"] / 60) if row["seconds"] else 0.0
        print(f"| {name} | {row['judge_B']:+.3f} | {row['train_rm_A']:+.3f} | {row['kl']:.3f} | "
              f"{row['seconds']:.0f} | {gain:+.4f} |")
    print("\nsample answers (first two held-out prompts):")
    for name, texts in samples.items():
        print(f"  {name}: {[t[:80] for t in texts]}")
    results["samples"] = samples
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
