"""Helpers the benchmarks share: the machine's description, its load, and its matmul peak.

A throughput number means little without the machine it came from and how busy that machine
was, and MFU needs a peak FLOP/s. Vendor peaks assume every core at full turbo doing nothing
else; on a shared 2-core CPU the honest denominator is what a large matmul actually reaches
in the same run, so ``peak_matmul_flops`` measures it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch


# The instruction sets that decide CPU matmul speed: fp32 (AVX-512, FMA), int8 (VNNI), bf16.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
             "amx_bf16", "amx_int8")


def cpu_flags() -> str:
    """``CPU_FLAGS`` as /proc/cpuinfo reports them, each marked + (present) or - (absent):
    benchmarks print it so a figure can be read against the machine that made it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            have = set(next(line for line in handle if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return "unknown (no /proc/cpuinfo flags)"
    return " ".join(f"{flag}{'+' if flag in have else '-'}" for flag in CPU_FLAGS)


def cpu_model_name() -> str:
    """The CPU's model name as ``lscpu`` shows it (from /proc/cpuinfo), or platform's guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` prints them ('n/a' where unknown)."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def machine_summary(device: torch.device | None = None) -> str:
    """One line: device, CPU model, core count, torch threads, torch version, load now."""
    device = device or torch.device("cpu")
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{os.cpu_count()}-core CPU {cpu_model_name()}, {torch.get_num_threads()} torch threads"
    return f"{what}; torch {torch.__version__}; load average {load_average()}"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a timer measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, including any GPU work it queued."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_matmul_flops(dtype: torch.dtype, device: torch.device | None = None, *,
                      size: int | None = None, repeats: int = 5) -> float:
    """Best FLOP/s of a ``size`` x ``size`` matmul in ``dtype``: the MFU denominator.

    The default size is 2048 on a CPU and 8192 on a GPU: an H200 reached only about half its
    bf16 rate (370-420 of about 790 TFLOP/s) on 2048 x 2048 products.

    Best-of-``repeats`` because other processes only ever slow a run down; the fastest one is
    the closest to what the hardware can do. One n x n by n x n product is 2 n^3 FLOPs.

    On a CPU in float32 both of PyTorch's matmul libraries are timed and the faster counts:
    ``torch.matmul`` (MKL) and oneDNN's linear. On an AMD EPYC MKL's generic path reached
    219 GFLOP/s where oneDNN reached 493 (``scratchllm.model.cpu_matmul``), and a peak taken
    from MKL alone would have flattered every MFU there 2.25x.
    """
    device = device or torch.device("cpu")
    size = size or (2048 if device.type == "cpu" else 8192)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    products = [lambda: torch.matmul(a, b)]
    if device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available():
        products.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    best = float("inf")
    for product in products:
        product()  # warm up: thread pool, kernel selection, caches
        best = min(best, min(time_call(product, device) for _ in range(repeats)))
    return 2 * size ** 3 / best


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
