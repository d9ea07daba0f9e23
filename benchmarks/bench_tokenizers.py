"""Tokenizer throughput on tiny Shakespeare (MB/s of UTF-8 input).

Compares raw tiktoken ``encode_ordinary`` with our ``GPT2Tokenizer.encode`` (target: ratio
>= 0.9, i.e. the special-token check adds almost nothing) and the pure-Python
``BPETokenizer.from_gpt2`` (cold cache, then warm). Run: ``python benchmarks/bench_tokenizers.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from scratchllm.tokenizers import BPETokenizer, GPT2Tokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _best_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(data_dir: Path = DATA) -> dict:
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    gpt2_dir = data_dir / "gpt2"

    fast = GPT2Tokenizer(gpt2_dir)
    enc = fast.encoding  # the same tiktoken Encoding, called without our wrapper
    assert fast.encode(text) == enc.encode_ordinary(text)
    tiktoken_s = _best_seconds(lambda: enc.encode_ordinary(text))
    ours_s = _best_seconds(lambda: fast.encode(text))

    slow = BPETokenizer.from_gpt2(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe")
    start = time.perf_counter()
    slow.encode(text)
    cold_s = time.perf_counter() - start
    warm_s = _best_seconds(lambda: slow.encode(text), repeats=3)

    return {
        "megabytes": round(mb, 3),
        "tiktoken_MBps": round(mb / tiktoken_s, 2),
        "gpt2_tokenizer_MBps": round(mb / ours_s, 2),
        "ratio": round(tiktoken_s / ours_s, 3),
        "python_bpe_cold_MBps": round(mb / cold_s, 2),
        "python_bpe_warm_MBps": round(mb / warm_s, 2),
    }


if __name__ == "__main__":
    result = run()
    for key, value in result.items():
        print(f"{key}: {value}")
    print(
        f"gpt2_tokenizer_MBps: {result['gpt2_tokenizer_MBps']} "
        f"(tiktoken: {result['tiktoken_MBps']}, ratio {result['ratio']})"
    )
