"""Quality per minute of training, side by side with nanoGPT on tiny Shakespeare (issue 11).

One run of this script trains twice on ../shared/data/tinyshakespeare.txt, one after the other,
on the same number of threads:

1. nanoGPT's own CPU recipe (../shared/peers/nanogpt/run_shakespeare_char.sh: character level,
   4x128, 2,000 iterations), run from where it lives; it prints its wall time T and its final
   validation loss L (nats per character, last 10% of the file).
2. ``scratchllm pretrain --config configs/speedrun_shakespeare.yaml``, with checkpoints kept
   every ``--every`` steps (they change nothing in training; saving them costs the run time,
   which is counted). Afterwards each checkpoint is scored on exactly nanoGPT's validation
   characters (``text[int(0.9 n):]``) with ``text_perplexity``: loss per character = token loss
   x tokens / characters, so a BPE and a character model compare fairly.

A checkpoint's time is the wall time from launching the ``scratchllm`` process (imports, data,
tokenizer training included) to the end of that step, read from the run's metrics. Reported:
the loss per character at nanoGPT's wall time T (the last checkpoint at or before T) and the
first time scratchllm's loss per character is at or below L. nanoGPT's L is its own estimate
(20 random 64-character windows per split); ours is the whole validation split.

    .venv/bin/python benchmarks/speedrun.py [--threads 2] [--every 25]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NANOGPT = ROOT.parent / "shared" / "peers" / "nanogpt" / "run_shakespeare_char.sh"
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
CONFIG = ROOT / "configs" / "speedrun_shakespeare.yaml"


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def run_nanogpt(threads: int) -> tuple[float, float]:
    """nanoGPT's wall time and final validation loss, from its script's last two lines."""
    proc = subprocess.Popen(["bash", str(NANOGPT), sys.executable], stdout=subprocess.PIPE,
                            text=True, env=thread_env(threads))
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("step "):  # its evaluations, as they come: progress on a busy machine
            print(f"  nanoGPT {line.strip()}", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"{NANOGPT} failed (exit {proc.returncode})")
    out = "".join(lines)
    wall = float(re.search(r"^nanogpt_wall_s: ([0-9.]+)", out, re.M).group(1))
    loss = float(re.search(r"^nanogpt_val_loss: ([0-9.]+)", out, re.M).group(1))
    return wall, loss


def run_scratchllm(config: Path, out: Path, threads: int, every: int) -> tuple[float, float]:
    """Train the recipe; returns (seconds from launch to the first step's start, whole wall
    time). The launch-to-training offset comes from the moment the 'training ...' line
    appears on stderr; the steps' own times come from metrics.jsonl afterwards."""
    command = [sys.executable, "-m", "scratchllm", "pretrain", "--config", str(config),
               "--out", str(out), "--overwrite", "--save-every", str(every),
               "--set", "keep_last=100000", "--set", f"log_every={every}"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=thread_env(threads), cwd=ROOT)
    offset, lines = None, []
    for line in proc.stderr:  # type: ignore[union-attr]
        if offset is None and line.startswith("training "):
            offset = time.perf_counter() - start
        lines.append(line)
    if proc.wait() != 0 or offset is None:
        sys.stderr.write("".join(lines[-20:]))
        raise SystemExit(f"scratchllm pretrain failed (exit {proc.returncode})")
    return offset, time.perf_counter() - start


def score_checkpoints(run: Path, val_text: str, offset: float) -> list[tuple[int, float, float]]:
    """(step, seconds since launch, validation loss per character) of every checkpoint."""
    import torch

    from scratchllm.evaluate.perplexity import text_perplexity
    from scratchllm.train.metrics import read_metrics
    from scratchllm.weights.auto import open_model

    elapsed = {r["step"]: r["elapsed"] for r in read_metrics(run / "metrics.jsonl")
               if r.get("event") in ("train", "eval")}  # the last step has an eval record
    rows = []
    for checkpoint in sorted((run / "checkpoints").iterdir()):
        step = int(checkpoint.name.split("-")[1])
        loaded = open_model(checkpoint, device=torch.device("cpu"))
        window = loaded.model.config.context_length
        with torch.no_grad():
            result = text_perplexity(loaded.model, val_text, tokenizer=loaded.tokenizer,
                                     window=window, batch_size=32)
        rows.append((step, offset + elapsed[step], float(result.loss_per_char)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both (default 2)")
    parser.add_argument("--every", type=int, default=25, help="checkpoint every N steps")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--skip-nanogpt", nargs=2, type=float, metavar=("WALL_S", "LOSS"),
                        help="use these nanoGPT figures instead of running it (for tuning only)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch

    from common import cpu_flags, load_average, machine_summary

    torch.set_num_threads(args.threads)
    print(f"machine: {machine_summary()}")
    print(f"cpu flags: {cpu_flags()}")
    print(f"data: {DATA} ({DATA.stat().st_size:,} bytes); threads: {args.threads}")
    if args.skip_nanogpt:
        nano_wall, nano_loss = args.skip_nanogpt
        print(f"nanoGPT (given, not run): {nano_wall:.1f} s, val loss {nano_loss:.4f}")
    else:
        nano_wall, nano_loss = run_nanogpt(args.threads)
        print(f"nanoGPT run_shakespeare_char.sh: {nano_wall:.1f} s, final val loss "
              f"{nano_loss:.4f} nats/char; load average now {load_average()}")
    text = DATA.read_text(encoding="utf-8")
    val_text = text[int(len(text) * 0.9):]  # nanoGPT's prepare.py split, to the character
    with tempfile.TemporaryDirectory(prefix="speedrun-") as tmp:
        run = Path(tmp) / "run"
        offset, wall = run_scratchllm(args.config, run, args.threads, args.every)
        print(f"scratchllm pretrain --config {args.config}: {wall:.1f} s "
              f"(first step after {offset:.1f} s); load average now {load_average()}")
        rows = score_checkpoints(run, val_text, offset)
    print(f"\n{'step':>6}{'seconds':>10}{'val loss/char':>15}")
    for step, seconds, loss in rows:
        print(f"{step:>6}{seconds:>10.1f}{loss:>15.4f}")
    before = [r for r in rows if r[1] <= nano_wall]
    at_nano = before[-1][2] if before else float("nan")
    reached = next((r for r in rows if r[2] <= nano_loss), None)
    reach_s = reached[1] if reached else float("inf")
    print(f"\nval loss/char at nanoGPT's wall time ({nano_wall:.1f} s): {at_nano:.4f} "
          f"(target <= 1.70)")
    print(f"time to nanoGPT's final loss {nano_loss:.4f}: {reach_s:.1f} s = "
          f"{reach_s / nano_wall:.0%} of nanoGPT's (target <= 50%)")
    print(f"speedrun_val_loss_per_char_at_nanogpt_time: {at_nano:.4f} (nanogpt: {nano_loss:.4f}, "
          f"ratio {at_nano / nano_loss:.3f})")
    print(f"speedrun_seconds_to_nanogpt_loss: {reach_s:.1f} (nanogpt: {nano_wall:.1f}, "
          f"ratio {reach_s / nano_wall:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
