"""DPO fine-tuning speed at the GPT-2 124M shape: the book's way against ours (issue 11).

Workload: the book's ch. 7 preference data (``instruction-data-with-preference.json``, the
85% training split: 935 pairs), a GPT-2 124M-shaped model with random weights (12 x 768,
vocabulary 50,257; no pretrained weights offline; dropout off, as DPO runs), AdamW at the
book's lr 5e-6, fp32, full fine-tuning and LoRA (rank 8, alpha 16).

* ``book``: a re-implementation of the book's DPO step: a frozen deep copy of the starting
  model as the reference, four forward passes per batch (policy chosen, policy rejected,
  reference chosen, reference rejected), each over full (B, T, vocab) logits with a full
  fp32 log-softmax, then gather and the masked mean.
* ``ours``: ``scratchllm.finetune.dpo``'s default path: the reference log-probs computed
  once per pair before training (``cache_reference_logprobs``, timed as the "pre-pass"),
  then the policy alone, one pass over the stacked (2B, T) batch, the vocabulary head only at
  the response positions, a few hundred at a time.
* ``shared`` (with ``--contenders book,ours,shared``): ours with each pair's prompt run once
  and both answers after it (``finetune.shared_prompt``; off by default in the library).

Both get the same weights (seed 0), the same batches (a seeded draw of training pairs), the
same optimizer; their losses must agree step for step (same maths, float rounding aside).
Each contender runs in its own process (so peak RSS, from ``getrusage``, is its own), one
warm-up step and then ``--steps`` timed steps; the order flips every round (book, ours,
ours, book, ...) so load from other processes hits both. Reported: steps/s (median step),
peak RSS, time to finish the run's steps (pre-pass included), and an epoch projected from
them (pre-pass per pair x 935 + 935 / batch steps).

Run: ``python benchmarks/dpo_throughput.py [--batch 4] [--steps 3] [--rounds 1]
[--modes full,lora] [--profile]``. ``--profile`` prints torch.profiler's top operators of
one step of each contender instead of timing them.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from common import cpu_flags, load_average, machine_summary, median

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "instruction" / "instruction-data-with-preference.json"
TRAIN_PAIRS = 935  # the 85% split of the book's 1,100 pairs
LORA = {"rank": 8, "alpha": 16.0}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- the book's DPO step


def book_logprobs(model, inputs, targets, mask):
    """The book's ``compute_logprobs``: full logits, full log-softmax, gather, masked mean."""
    import torch
    import torch.nn.functional as F

    logits = model(inputs)
    log_probs = F.log_softmax(logits, dim=-1)
    picked = torch.gather(log_probs, -1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1) / mask.sum(-1)


def book_loss(policy, reference, batch, beta):
    """The book's ``compute_dpo_loss_batch``: four forward passes, the reference's unbatched."""
    import torch
    import torch.nn.functional as F

    def side(model, name):
        return book_logprobs(model, batch[f"{name}_inputs"], batch[f"{name}_targets"],
                             batch[f"{name}_mask"])
    policy_chosen, policy_rejected = side(policy, "chosen"), side(policy, "rejected")
    with torch.no_grad():
        ref_chosen, ref_rejected = side(reference, "chosen"), side(reference, "rejected")
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    return -F.logsigmoid(beta * logits).mean()


# ---------------------------------------------------------------- one contender (child)


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from scratchllm.data.instruction import split_entries
    from scratchllm.data.preference import (PreferenceDataset, load_preference_data,
                                            preference_collate)
    from scratchllm.finetune import dpo
    from scratchllm.finetune.logprobs import pair_logprobs
    from scratchllm.finetune.dpo_reference import cache_reference_logprobs, with_reference
    from scratchllm.model import GPTConfig, GPTModel
    from scratchllm.model.cpu_matmul import onednn_linears
    from scratchllm.model.lora import apply_lora
    from scratchllm.tokenizers import GPT2Tokenizer
    from scratchllm.train.optim import build_optimizer
    from scratchllm.utils.heap import retained_heap

    contender, mode = args.child.split("/")
    tok = GPT2Tokenizer(SHARED / "data" / "gpt2")
    train, _, _ = split_entries(load_preference_data(args.data))
    n_steps = 1 + args.steps
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(123))
    chosen = [train[i] for i in pick[:n_steps * args.batch].tolist()]
    pairs = PreferenceDataset(chosen, tok)
    collate = with_reference(partial(preference_collate, pad_id=tok.eot_id, max_length=1024))

    torch.manual_seed(0)
    config = GPTConfig.preset("gpt2-small", drop_rate=0.0, context_length=1024,
                              n_layers=args.n_layers, emb_dim=args.emb_dim, n_heads=args.n_heads)
    policy = GPTModel(config).eval()  # DPO compares log-probs without dropout
    start_rss = rss_mb()
    tic = time.perf_counter()
    reference, prepass = None, 0.0
    if contender == "book":
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    else:
        cache_reference_logprobs(policy, pairs, collate, batch_size=args.batch)
        prepass = time.perf_counter() - tic
    if mode == "lora":
        apply_lora(policy, **LORA)
    optimizer = build_optimizer(policy, lr=5e-6, weight_decay=0.01, betas=(0.9, 0.999),
                                decay_all=True)

    if contender == "shared":  # ours, each pair's prompt run once (finetune.shared_prompt)
        dpo.pair_logprobs = partial(pair_logprobs, share_prompt=True)

    def loss_of(batch):
        if contender == "book":
            return book_loss(policy, reference, batch, 0.1)
        return dpo.dpo_terms(policy, None, batch, beta=0.1)[0].mean()

    step_times, losses, tokens = [], [], []
    # as the fine-tuning loop steps (train.run_control.run_steps), for both contenders; ours
    # with its float32 linears through oneDNN where that loop chooses it (AMD CPUs)
    with retained_heap(), onednn_linears(enabled=contender != "book"):
        for step in range(n_steps):
            batch = collate([pairs[i] for i in range(step * args.batch, (step + 1) * args.batch)])
            if args.profile and step == 1:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    loss = loss_of(batch)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
                return {"profile": table, "shape": list(batch["chosen_inputs"].shape)}
            t0 = time.perf_counter()
            loss = loss_of(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
            tokens.append((2 * batch["chosen_inputs"].numel(),
                           int(batch["chosen_mask"].sum() + batch["rejected_mask"].sum())))
    return {"name": args.child, "step_times": step_times, "losses": losses, "tokens": tokens,
            "prepass": prepass, "prepass_pairs": len(pairs),
            "time_to_steps": time.perf_counter() - tic, "start_rss_mb": start_rss,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(name: str, args: argparse.Namespace) -> dict:
    argv = [sys.executable, __file__, "--child", name, "--batch", str(args.batch),
            "--steps", str(args.steps), "--threads", str(args.threads), "--data", str(args.data)]
    if args.profile:
        argv.append("--profile")
    argv += ["--n-layers", str(args.n_layers), "--emb-dim", str(args.emb_dim),
             "--n-heads", str(args.n_heads)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": str(args.threads),
                               "PYTHONPATH": str(ROOT / "src")})
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the comparison


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="pairs per step (the book: 8)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (+1 warm-up)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default="full,lora", help="full, lora or both")
    parser.add_argument("--contenders", default="book,ours",
                        help="book, ours and optionally shared (ours, each prompt run once)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--n-layers", type=int, default=12,
                        help="12 (GPT-2 124M); fewer: a smoke test")
    parser.add_argument("--emb-dim", type=int, default=768)
    parser.add_argument("--n-heads", type=int, default=12)
    parser.add_argument("--profile", action="store_true",
                        help="print the top operators of one step of each contender")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    known = ["book", "ours", "shared"]
    contenders = {c for c in args.contenders.split(",") if c}
    if not {"book", "ours"} <= contenders <= set(known):
        parser.error("--contenders: book and ours, optionally shared")
    contenders = sorted(contenders, key=known.index)
    print(f"machine: {machine_summary()}; CPU flags: {cpu_flags()}")
    print(f"workload: DPO on {args.data.name} (935 training pairs), GPT "
          f"{args.n_layers}x{args.emb_dim} (12x768: GPT-2 124M), vocab 50257, random weights, "
          f"no dropout; batch {args.batch} pairs, fp32, AdamW lr 5e-6; {args.steps} timed "
          f"steps + 1 warm-up per run, {args.rounds} round(s); modes {', '.join(modes)} "
          f"(LoRA rank {LORA['rank']}, alpha {LORA['alpha']:g})")
    if args.profile:
        for mode in modes:
            for contender in contenders:
                result = run_child(f"{contender}/{mode}", args)
                print(f"\n{contender}/{mode}, one step, batch (2 x {result['shape']}):")
                print(result["profile"])
        return 0

    runs: dict[str, list[dict]] = {}
    flip = False
    for r in range(args.rounds):
        for mode in modes:
            for contender in (contenders[::-1] if flip else contenders):
                name = f"{contender}/{mode}"
                result = run_child(name, args)
                runs.setdefault(name, []).append(result)
                print(f"  round {r + 1} {name}: {1 / median(result['step_times'][1:]):.3f} "
                      f"steps/s, pre-pass {result['prepass']:.1f} s, peak RSS "
                      f"{result['peak_rss_mb']:.0f} MB, load {load_average()}", flush=True)
                flip = not flip
    print(f"load average after: {load_average()}")
    steps_per_epoch = math.ceil(TRAIN_PAIRS / args.batch)
    positions = runs[next(iter(runs))][0]["tokens"]
    print(f"positions per step (all / scored response tokens): "
          f"{', '.join(f'{a}/{b}' for a, b in positions)}")
    print(f"\n{'run':<11}{'steps/s':>9}{'step s':>8}{'pre-pass s/pair':>17}{'run s':>8}"
          f"{'epoch s':>9}{'RSS start MB':>14}{'peak MB':>9}")
    rates, epochs = {}, {}
    for name, results in runs.items():
        step = median([t for res in results for t in res["step_times"][1:]])  # 1st: warm-up
        per_pair = median([res["prepass"] / res["prepass_pairs"] for res in results])
        epochs[name] = per_pair * TRAIN_PAIRS + steps_per_epoch * step
        rates[name] = 1 / step
        print(f"{name:<11}{1 / step:>9.3f}{step:>8.2f}{per_pair:>17.2f}"
              f"{median([res['time_to_steps'] for res in results]):>8.1f}{epochs[name]:>9.0f}"
              f"{max(res['start_rss_mb'] for res in results):>14.0f}"
              f"{max(res['peak_rss_mb'] for res in results):>9.0f}")
    for mode in modes:
        book = runs[f"book/{mode}"][0]["losses"]
        print(f"{mode} losses - ln 2 (same weights and batches): book "
              f"{[f'{x - math.log(2):+.3e}' for x in book]}")
        for contender in contenders[1:]:
            other = runs[f"{contender}/{mode}"][0]["losses"]
            diff = max(abs(a - b) for a, b in zip(book, other))
            print(f"  {contender}: {[f'{x - math.log(2):+.3e}' for x in other]}; max |difference| "
                  f"from book {diff:.1e}")
            if diff > 1e-4:
                print(f"WARNING: {mode} {contender} losses differ by {diff:.1e}: "
                      f"not the same maths")
        if "shared" in contenders:
            print(f"{mode} prompt run once vs twice (shared / ours steps/s): "
                  f"{rates[f'shared/{mode}'] / rates[f'ours/{mode}']:.2f}")
        print(f"{mode} epoch ({steps_per_epoch} steps + pre-pass): book "
              f"{epochs[f'book/{mode}']:.0f} s, ours {epochs[f'ours/{mode}']:.0f} s, ratio "
              f"{epochs[f'book/{mode}'] / epochs[f'ours/{mode}']:.2f}")
    lines = [f"dpo_{'lora_' if mode == 'lora' else ''}train_steps_per_sec: "
             f"{rates[f'ours/{mode}']:.3f} (book: {rates[f'book/{mode}']:.3f}, ratio "
             f"{rates[f'ours/{mode}'] / rates[f'book/{mode}']:.2f})" for mode in modes]
    print("\n".join(lines[::-1]))  # full fine-tuning's line last
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
