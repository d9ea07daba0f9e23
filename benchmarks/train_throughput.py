"""Pretraining speed of the book's 124M GPT: training tokens/s and MFU, ours vs the book's package.

The workload is chapter 5's (book 5.2): GPT-2 small's architecture with an untied head
(163M parameters), context 256, batch 2, dropout 0.1, AdamW(lr 4e-4, weight decay 0.1).

* ours: ``scratchllm.model.GPTModel`` stepped by the Trainer's own pieces
  (``train.optim.build_optimizer`` and ``train.steps.accumulate_gradients``), eager, and a
  second row with ``compile: blocks`` (``train.compiling.compile_blocks``: one compiled
  transformer block for all twelve, as ``scratchllm pretrain --compile blocks`` runs); its
  compile time is the first step's and is reported with the step count that pays it back;
* book: ``llms_from_scratch.ch04.GPTModel`` stepped like ``ch05.train_model_simple``
  (``calc_loss_batch``, ``zero_grad``/``backward``/``step``);
* nanoGPT: Karpathy's ``model.py``, imported at run time from ``../shared/peers/nanogpt``
  (never copied), the same shape (GPT-2 small, vocabulary 50,257 unpadded, dropout 0.1,
  biases as GPT-2, head tied to the embedding as nanoGPT does), stepped as its ``train.py``
  does: ``logits, loss = model(x, y)``, its own ``configure_optimizers`` AdamW.

Both run in fp32 and under bf16 autocast, in the same process, interleaved round by round
(the order flips every round) so a burst of load from other processes hits all of them.
Warmup steps are not timed; each figure is the median over ``--rounds`` timed windows, and
"paired" is the median of the per-round ratios (windows timed back to back).
MFU = training FLOPs per token (6 N plus attention, ``model.stats.training_flops_per_token``)
x tokens/s / the peak matmul FLOP/s this machine reaches in the same run for that dtype.

Like ``scratchllm pretrain`` (``Trainer.run``), the timed steps run inside
``utils.heap.retained_heap``, so a step reuses the pages the last one freed instead of
faulting in fresh ones; the setting is the process's, so the peers in the same run get it
too (``--default-malloc`` measures everyone with glibc's defaults instead).

Target: ours >= 1.3x the book's package in fp32 and in bf16 (issue 3); >= 60% of the
measured fp32 matmul peak (issue 11). ``--profile`` prints torch.profiler's op breakdown of
one of our fp32 steps first (shares of CPU time: what to optimise, even on a busy machine).
``--cold-compile`` points inductor at an empty cache folder, so the compile time is a first
run's (otherwise an earlier run's on-disk cache may shorten it).
Run: ``python benchmarks/train_throughput.py [--rounds 5] [--precision both] [--compile]``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from common import (cpu_flags, load_average, machine_summary, median, peak_matmul_flops,
                    time_call)
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.model.stats import training_flops_per_token
from scratchllm.train import steps
from scratchllm.model.cpu_matmul import matmul_library, onednn_linears
from scratchllm.train.compiling import compile_for_training
from scratchllm.train.optim import build_optimizer
from scratchllm.utils.heap import retained_heap

SEED, LR, WEIGHT_DECAY = 123, 4e-4, 0.1
NANOGPT = Path(__file__).resolve().parents[2] / "shared" / "peers" / "nanogpt"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Contender:
    """One model + optimizer and a function doing one training step on a batch."""

    name: str
    step: Callable[[torch.Tensor, torch.Tensor, str], float]
    speeds: dict[str, list[float]] = field(default_factory=dict)  # precision -> tokens/s
    first_step_s: float = 0.0  # the first warmup step: includes any compile


def build_ours(config: GPTConfig, device: torch.device, compile_model: bool,
               mode: str | None = None) -> Contender:
    """Our model stepped exactly as ``Trainer.train_step`` does (no clipping, constant lr),
    with ``build_optimizer``'s AdamW (PyTorch's fused kernel on CPU and CUDA); ``mode`` is
    a training config's ``compile`` value (``--compile`` = the whole model)."""
    torch.manual_seed(SEED)
    model = GPTModel(config).to(device).train()
    forward_model = compile_for_training(model, model, mode or compile_model)
    optimizer = build_optimizer(model, lr=LR, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999),
                                decay_all=True)

    def step(inputs: torch.Tensor, targets: torch.Tensor, precision: str) -> float:
        optimizer.zero_grad(set_to_none=True)
        # as the trainer steps: on AMD CPUs float32 linears through oneDNN (model.cpu_matmul)
        with onednn_linears(enabled=not (mode or compile_model)):
            loss, _ = steps.accumulate_gradients(forward_model, [(inputs, targets)], 1,
                                                 device=device,
                                                 autocast=steps.autocast_for(precision, device))
        optimizer.step()
        return loss

    return Contender("scratchllm" if mode is None else f"scratchllm compile={mode}", step)


def build_book(config: GPTConfig, device: torch.device, compile_model: bool) -> Contender:
    """The book's model and loop body (ch05.train_model_simple), autocast added for bf16."""
    from llms_from_scratch import ch04, ch05

    book_cfg = dict(vocab_size=config.vocab_size, context_length=config.context_length,
                    emb_dim=config.emb_dim, n_heads=config.n_heads, n_layers=config.n_layers,
                    drop_rate=config.drop_rate, qkv_bias=config.qkv_bias)
    torch.manual_seed(SEED)
    model = ch04.GPTModel(book_cfg).to(device).train()
    forward_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def step(inputs: torch.Tensor, targets: torch.Tensor, precision: str) -> float:
        optimizer.zero_grad()
        autocast = (contextlib.nullcontext() if precision == "fp32"
                    else torch.autocast(device_type=device.type, dtype=DTYPES[precision]))
        with autocast:
            loss = ch05.calc_loss_batch(inputs, targets, forward_model, device)
        loss.backward()
        optimizer.step()
        return loss.item()

    return Contender("book llms_from_scratch", step)


def build_nanogpt(config: GPTConfig, device: torch.device, compile_model: bool,
                  folder: Path = NANOGPT, optimizer_device: str | None = None) -> Contender:
    """nanoGPT's model and optimizer from its own files (imported from the peers folder).
    Its ``configure_optimizers`` picks fused AdamW for "cuda" only; ``optimizer_device`` names
    the device type it is told (``host_overhead.py`` asks for CUDA's choice on the CPU)."""
    folder = folder.resolve()
    if not (folder / "model.py").is_file():
        raise SystemExit(f"nanoGPT's model.py is not in {folder}: pass --nanogpt DIR")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import model as nanogpt  # ../shared/peers/nanogpt/model.py

    torch.manual_seed(SEED)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints parameter counts
        model = nanogpt.GPT(nanogpt.GPTConfig(
            block_size=config.context_length, vocab_size=config.vocab_size,
            n_layer=config.n_layers, n_head=config.n_heads, n_embd=config.emb_dim,
            dropout=config.drop_rate, bias=True)).to(device).train()
        optimizer = model.configure_optimizers(WEIGHT_DECAY, LR, (0.9, 0.999),
                                               optimizer_device or device.type)
    forward_model = torch.compile(model) if compile_model else model

    def step(inputs: torch.Tensor, targets: torch.Tensor, precision: str) -> float:
        autocast = (contextlib.nullcontext() if precision == "fp32"
                    else torch.autocast(device_type=device.type, dtype=DTYPES[precision]))
        inputs, targets = inputs.to(device), targets.to(device)  # as ours and the book's do
        with autocast:
            _, loss = forward_model(inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return Contender("nanoGPT", step)


def profile_step(contender: Contender, batches, steps: int = 2) -> None:
    """torch.profiler's ops by self CPU time over ``steps`` fp32 steps (after one warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    print(f"profile of {contender.name}, {steps} fp32 steps:")
    contender.step(*batches[0], "fp32")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            contender.step(*batches[i % len(batches)], "fp32")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def make_batches(config: GPTConfig, batch_size: int, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few fixed random (inputs, targets) batches; the values do not affect the speed."""
    gen = torch.Generator().manual_seed(SEED)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, config.vocab_size, (batch_size, config.context_length + 1), generator=gen)
        batches.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
    return batches


def measure(contenders: list[Contender], precisions: list[str], batches, *, device: torch.device,
            warmup: int, window: int, rounds: int
            ) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """Fill each contender's ``speeds``.

    Returns each contender's loss on its very first step (same seed and batch, so they should
    agree to ~0.05, dropout masks differ), the peak matmul FLOP/s per precision, measured
    before every round and kept at its best (other processes only ever slow a run down), and
    each round's own peak: the host's speed drifts by 1.5x within minutes, and a round's
    windows are best judged against the peak measured just before them.
    """
    first_losses: dict[str, float] = {}
    peaks = {p: peak_matmul_flops(DTYPES[p], device) for p in precisions}
    combos = [(c, p) for p in precisions for c in contenders]
    for contender, precision in combos:
        for i in range(warmup):
            start = time.perf_counter()
            loss = contender.step(*batches[i % len(batches)], precision)
            if contender.name not in first_losses:
                contender.first_step_s = time.perf_counter() - start
            first_losses.setdefault(contender.name, loss)
        contender.speeds[precision] = []
    tokens = batches[0][0].numel() * window
    round_peaks: dict[str, list[float]] = {p: [] for p in precisions}
    for r in range(rounds):
        for p in precisions:
            round_peaks[p].append(peak_matmul_flops(DTYPES[p], device))
            peaks[p] = max(peaks[p], round_peaks[p][-1])
        for contender, precision in (combos if r % 2 == 0 else combos[::-1]):
            def run_window() -> None:
                for i in range(window):
                    contender.step(*batches[(r + i) % len(batches)], precision)
            contender.speeds[precision].append(tokens / time_call(run_window, device))
            print(f"  round {r + 1}/{rounds} {contender.name} {precision}: "
                  f"{contender.speeds[precision][-1]:.1f} tok/s", file=sys.stderr, flush=True)
    return first_losses, peaks, round_peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5, help="timed windows per contender")
    parser.add_argument("--window", type=int, default=2, help="training steps per timed window")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender/precision")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--preset", default="gpt2-small", help="GPTConfig preset (tiny for a smoke test)")
    parser.add_argument("--compile", action="store_true", help="torch.compile all models whole")
    parser.add_argument("--no-blocks", action="store_true",
                        help="leave out the scratchllm compile=blocks row")
    parser.add_argument("--cold-compile", action="store_true",
                        help="compile into an empty inductor cache (a first run's compile time)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nanogpt", type=Path, default=NANOGPT,
                        help=f"folder holding nanoGPT's model.py (default {NANOGPT})")
    parser.add_argument("--profile", action="store_true",
                        help="print the op breakdown of our fp32 step before timing")
    parser.add_argument("--default-malloc", action="store_true",
                        help="glibc's malloc defaults instead of the trainer's retained heap")
    args = parser.parse_args(argv)
    if args.cold_compile:
        cold_cache = tempfile.mkdtemp(prefix="inductor-cold-")
        atexit.register(shutil.rmtree, cold_cache, True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold_cache

    device = torch.device(args.device)
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    config = GPTConfig.preset(args.preset, context_length=args.context_length, drop_rate=0.1)
    print(f"machine: {machine_summary(device)}; CPU flags: {cpu_flags()}")
    if device.type == "cpu":
        print(f"scratchllm's float32 CPU matmuls: {matmul_library()} (model.cpu_matmul; "
              "the peers run torch.mm, MKL)")
    print(f"workload: {args.preset} (context {config.context_length}, batch {args.batch_size}, "
          f"dropout 0.1, AdamW lr {LR} wd {WEIGHT_DECAY}); {args.warmup} warmup steps, "
          f"{args.rounds} rounds x {args.window} steps, compile={args.compile}, "
          f"malloc={'glibc defaults' if args.default_malloc else 'retained heap'}")
    contenders = [build_ours(config, device, args.compile),
                  build_nanogpt(config, device, args.compile, args.nanogpt),
                  build_book(config, device, args.compile)]
    if not args.no_blocks:
        contenders.insert(1, build_ours(config, device, args.compile, mode="blocks"))
    batches = make_batches(config, args.batch_size)
    with contextlib.nullcontext() if args.default_malloc else retained_heap():
        if args.profile:  # on a model of its own: the timed one starts untrained, like its peers
            profile_step(build_ours(config, device, args.compile), batches)
        first, peaks, round_peaks = measure(contenders, precisions, batches, device=device,
                               warmup=args.warmup, window=args.window, rounds=args.rounds)
        if args.profile and not args.no_blocks:  # after timing: its compile was timed above
            profile_step(build_ours(config, device, args.compile, mode="blocks"), batches)
    print(f"load average after: {load_average()}")
    print(f"first-step loss ({precisions[0]}; same batch; ours and the book share their init, nanoGPT has its own; dropout masks differ): "
          + ", ".join(f"{k} {v:.3f}" for k, v in first.items()))

    flops_per_token = training_flops_per_token(config)
    ours, nano, book = contenders[0], contenders[-2], contenders[-1]
    blocks = contenders[1] if len(contenders) == 4 else None
    if blocks is not None:
        # compile cost: the first step's time beyond a timed step's (first precision only)
        step_s = {c.name: batches[0][0].numel() / median(c.speeds[precisions[0]])
                  for c in (ours, blocks)}
        extra = blocks.first_step_s - step_s[blocks.name]
        saved = step_s[ours.name] - step_s[blocks.name]
        payback = f"pays back after {extra / saved:.0f} steps" if saved > 0 else "never pays back"
        print(f"compile=blocks ({precisions[0]}): first step {blocks.first_step_s:.1f} s "
              f"(eager: {ours.first_step_s:.1f} s), then {abs(saved):.2f} s "
              f"{'less' if saved > 0 else 'more'} per step than eager: {payback}"
              f"{' (cold inductor cache)' if args.cold_compile else ''}")
    print(f"\npeak matmul ({'2048' if device.type == 'cpu' else '8192'}^2, best of {5 * (args.rounds + 1)}): "
          + ", ".join(f"{p} {peaks[p] / 1e9:.0f} GFLOP/s" for p in precisions))
    for p in precisions:
        print(f"{p} peak before each round: "
              + ", ".join(f"{x / 1e9:.0f}" for x in round_peaks[p]) + " GFLOP/s")
    print(f"training FLOPs per token: {flops_per_token / 1e6:.0f}M")
    print("MFU: the median tok/s against the best peak of the run; MFU/round: the median of each "
          "round's tok/s against that round's own peak")
    print(f"\n{'model':<27}{'precision':<11}{'tok/s':>8}{'min':>8}{'best':>8}{'MFU':>8}"
          f"{'MFU/round':>10}{'vs book':>9}{'paired':>8}")
    for precision in precisions:
        book_speed = median(book.speeds[precision])
        for contender in contenders:
            speeds = contender.speeds[precision]
            tok_s = median(speeds)
            mfu = flops_per_token * tok_s / peaks[precision]
            mfu_round = median([flops_per_token * v / peak
                                for v, peak in zip(speeds, round_peaks[precision])])
            # Ratio of windows timed back to back in the same round: less exposed to load swings.
            paired = median([a / b for a, b in zip(speeds, book.speeds[precision])])
            print(f"{contender.name:<27}{precision:<11}{tok_s:>8.1f}{min(speeds):>8.1f}"
                  f"{max(speeds):>8.1f}{mfu:>8.1%}{mfu_round:>10.1%}{tok_s / book_speed:>8.2f}x"
                  f"{paired:>7.2f}x")
    print()
    for precision in sorted(precisions):  # bf16 first, so fp32's line is the last one
        tok_s, book_speed = median(ours.speeds[precision]), median(book.speeds[precision])
        print(f"train_tokens_per_sec_{precision}: {tok_s:.1f} (book llms_from_scratch: "
              f"{book_speed:.1f}, ratio {tok_s / book_speed:.2f})")
    mfu = {c.name: flops_per_token * median(c.speeds[precisions[0]]) / peaks[precisions[0]]
           for c in contenders}
    tag = precisions[0]
    for mine, suffix in [(ours, "")] + ([(blocks, "_blocks")] if blocks is not None else []):
        print(f"train_mfu_{tag}{suffix}: {mfu[mine.name]:.1%} (nanoGPT: {mfu[nano.name]:.1%}, "
              f"ratio {mfu[mine.name] / mfu[nano.name]:.2f})")
        print(f"train_mfu_{tag}{suffix}: {mfu[mine.name]:.1%} (book llms_from_scratch: "
              f"{mfu[book.name]:.1%}, ratio {mfu[mine.name] / mfu[book.name]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
