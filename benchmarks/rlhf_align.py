"""Part 2 of ``benchmarks/rlhf.py``: DPO, PPO and GRPO from one start, judged by reward model B.

DPO trains on half A's pairs; PPO and GRPO on half A's prompts, rewarded by reward model A.
Each policy answers the 110 held-out prompts greedily; judge B (trained on half B, which none
of the methods saw) and reward model A score the answers. The KL to the start is estimated
from answers sampled at temperature 1 (k1, nats per answer). Compute is the process's CPU
seconds (user + system, all threads), which other jobs on the machine do not inflate.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf_reward import timed
from scratchllm.finetune.dpo import finetune_dpo
from scratchllm.finetune.instruct import generate_responses
from scratchllm.finetune.rl import finetune_rl
from scratchllm.finetune.rl.prompts import make_prompt
from scratchllm.finetune.rl.rollout import encode_prompt, sample_rollout, score_tokens, step_generator
from scratchllm.train.metrics import read_metrics
from scratchllm.weights.auto import open_model


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
    """DPO, PPO, GRPO from the start; held-out scores under judge B and RM A, KL to start."""
    common = dict(device="cpu", precision="fp32", progress=False, overwrite=True)
    rl = dict(max_new_tokens=args.max_new_tokens, max_steps=args.rl_steps, test_responses=False,
              kl_coef=args.kl_coef, lr=args.rl_lr, temperature=1.0, **common)
    spent = {"start": (0.0, 0.0)}
    _, *spent["dpo"] = timed(finetune_dpo, sft, files["A"], tmp / "dpo", epochs=1, lr=args.dpo_lr,
                             beta=0.1, batch_size=8, eval_every=50, generate_test=False, **common)
    _, *spent["ppo"] = timed(finetune_rl, sft, files["A"], tmp / "ppo", reward_model=tmp / "rm_A",
                             algorithm="ppo", rollout_batch=args.ppo_rollouts,
                             minibatch=args.ppo_rollouts // 2, ppo_epochs=2, **rl)
    _, *spent["grpo"] = timed(finetune_rl, sft, files["A"], tmp / "grpo",
                              reward_model=tmp / "rm_A", algorithm="grpo",
                              rollout_batch=args.grpo_prompts, group_size=args.grpo_group,
                              minibatch=args.grpo_prompts * args.grpo_group // 2, ppo_epochs=2,
                              **rl)
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
