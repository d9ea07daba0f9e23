"""DPO fine-tuning speed before and after caching the reference log-probs (issue 11).

"before" is the code of an earlier commit (default: the one before the change), checked out
with ``git worktree`` into a temporary folder; "after" is this working tree. Each run is a
subprocess that imports scratchllm from its own tree and calls ``finetune_dpo`` on the book's
ch. 7 preference data (``instruction-data-with-preference.json``: 935 training pairs) with
the same small random GPT, batch 8, for ``--steps`` steps. Runs alternate (the order flips
every round) so load from other processes hits both.

Per run it reports the median training-step time (tokens / the log's ``tokens_per_sec``, so
evaluation is not counted), the time of the reference pre-pass "after" pays once per run
(``cache_reference_logprobs``: a no-grad pass over every training pair, sorted by length),
the process's peak memory, and the time a whole epoch would take: pre-pass + steps per epoch
x step time. "before" runs a frozen deep copy of the model forward at every step and
materialises the (2B, T, vocab) fp32 log-probabilities; "after" runs the policy alone, a few
hundred positions at a time.

Run: ``python benchmarks/dpo_throughput.py [--rounds 2] [--steps 8] [--before REV]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import load_average, machine_summary, median

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "instruction" / "instruction-data-with-preference.json"
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

# One run, executed in a fresh interpreter whose scratchllm comes from PYTHONPATH.
CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
import scratchllm
from scratchllm.finetune import dpo
model_dir, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
timed = {"prepass": 0.0}
if hasattr(dpo, "cache_reference_logprobs"):
    inner = dpo.cache_reference_logprobs
    def timed_prepass(*args, **kwargs):
        tic = time.perf_counter()
        inner(*args, **kwargs)
        timed["prepass"] += time.perf_counter() - tic
    dpo.cache_reference_logprobs = timed_prepass
tic = time.perf_counter()
dpo.finetune_dpo(model_dir, data, out, batch_size=8, eval_every=10_000, eval_batches=1,
                 stop_at=steps, device="cpu", precision="fp32", progress=False, seed=123)
wall = time.perf_counter() - tic
records = [json.loads(line) for line in open(out + "/metrics.jsonl")]
train = [r for r in records if r.get("event") == "train"]
step_times = [r["tokens_seen"] - p["tokens_seen"] for p, r in zip([{"tokens_seen": 0}] + train, train)]
step_times = [tokens / r["tokens_per_sec"] for tokens, r in zip(step_times, train)]
print(json.dumps({"source": scratchllm.__file__, "wall": wall, "prepass": timed["prepass"],
                  "step_times": step_times, "losses": [r["loss"] for r in train],
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "n/a"
    have = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                     if ln.startswith("flags")), []))
    return " ".join(f for f in FLAGS if f in have) or "none of " + " ".join(FLAGS)


def make_model(folder: Path, args: argparse.Namespace) -> Path:
    """A random GPT of the chosen shape with the GPT-2 tokenizer, saved as a model dir."""
    import torch

    from scratchllm.model import GPTConfig, GPTModel
    from scratchllm.tokenizers import GPT2Tokenizer
    from scratchllm.weights.model_dir import save_model_dir

    torch.manual_seed(0)
    config = GPTConfig.preset("gpt2-small", emb_dim=args.emb_dim, n_layers=args.n_layers,
                              n_heads=args.n_heads, context_length=args.context_length,
                              drop_rate=0.1)
    tok = GPT2Tokenizer(ROOT.parent / "shared" / "data" / "gpt2")
    return save_model_dir(folder / "model", GPTModel(config), tok)


def run_child(src: Path, model_dir: Path, out: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), str(args.data), str(out),
                           str(args.steps), str(args.threads)],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run from {src} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["source"].startswith(str(src)):
        raise SystemExit(f"expected scratchllm from {src}, got {result['source']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="b2b9139~1",
                        help="git revision of the 'before' code (default: before the change)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="DPO steps per run (batch 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--emb-dim", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {machine_summary()}; CPU flags: {cpu_flags()}")
    revision = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    print(f"workload: DPO on {args.data.name}, GPT {args.n_layers}x{args.emb_dim} "
          f"(context {args.context_length}, vocab 50257), batch 8, fp32, {args.steps} steps "
          f"per run, {args.rounds} rounds; before = commit {revision}, after = working tree")
    work = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    tree = work / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], cwd=ROOT,
                   capture_output=True, check=True)
    try:
        model_dir = make_model(work, args)
        sources = {"before": tree / "src", "after": ROOT / "src"}
        runs: dict[str, list[dict]] = {name: [] for name in sources}
        for r in range(args.rounds):
            order = list(sources) if r % 2 == 0 else list(sources)[::-1]
            for name in order:
                out = work / f"{name}-{r}"
                result = run_child(sources[name], model_dir, out, args)
                runs[name].append(result)
                shutil.rmtree(out, ignore_errors=True)
                print(f"  round {r + 1}/{args.rounds} {name}: "
                      f"{1 / median(result['step_times'][1:]):.2f} steps/s, pre-pass "
                      f"{result['prepass']:.1f} s, wall {result['wall']:.1f} s",
                      file=sys.stderr, flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                       capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {load_average()}")

    steps_per_epoch = 935 // 8
    summary = {}
    print(f"\n{'code':<8}{'steps/s':>9}{'step s':>9}{'pre-pass s':>12}{'epoch s':>10}"
          f"{'peak RSS MB':>13}")
    for name, results in runs.items():
        step = median([t for res in results for t in res["step_times"][1:]])  # 1st: warm-up
        prepass = median([res["prepass"] for res in results])
        epoch = prepass + steps_per_epoch * step
        rss = max(res["max_rss_mb"] for res in results)
        summary[name] = (1 / step, epoch)
        print(f"{name:<8}{1 / step:>9.3f}{step:>9.3f}{prepass:>12.1f}{epoch:>10.1f}{rss:>13.0f}")
    first = [runs[name][0]["losses"][:3] for name in runs]
    print(f"first losses (same seed and data; ln 2 = 0.6931): before {first[0]}, after {first[1]}")
    (before_rate, before_epoch), (after_rate, after_epoch) = summary["before"], summary["after"]
    print(f"epoch time (pre-pass + {steps_per_epoch} steps): before {before_epoch:.1f} s, "
          f"after {after_epoch:.1f} s, ratio {before_epoch / after_epoch:.2f}")
    print(f"dpo_train_steps_per_sec: {after_rate:.3f} (before {revision}: {before_rate:.3f}, "
          f"ratio {after_rate / before_rate:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
