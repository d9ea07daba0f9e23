"""The core library's figures in one run: tokenizer throughput and KV-cache generation speed.

Runs ``bench_tokenizers`` (our GPT-2 tokenizer vs raw tiktoken on tiny Shakespeare, and the
pure-Python BPE) and ``bench_generate`` (GPT-2 small greedy decoding: ours with and without the
KV cache, transformers' ``generate``, the book's ``generate_text_simple``). The last line is the
generation headline. Example: ``taskset -c 0 .venv/bin/python benchmarks/core.py --threads 1``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_generate  # noqa: E402
import bench_tokenizers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="time the two uncached loops on 30 tokens instead of 200")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tok = bench_tokenizers.run()
    print("tokenizer throughput on tinyshakespeare.txt (MB/s)")
    print(f"  raw tiktoken gpt2             {tok['tiktoken_MBps']:8.2f}")
    print(f"  scratchllm GPT2Tokenizer      {tok['gpt2_tokenizer_MBps']:8.2f}  "
          f"(ratio {tok['ratio']:.3f})")
    print(f"  pure-Python BPE, cold cache   {tok['python_bpe_cold_MBps']:8.2f}")
    print(f"  pure-Python BPE, warm cache   {tok['python_bpe_warm_MBps']:8.2f}")
    print(f"gpt2_tokenizer_MBps: {tok['gpt2_tokenizer_MBps']} "
          f"(tiktoken: {tok['tiktoken_MBps']}, ratio {tok['ratio']})")
    print()
    bench_generate.print_report(bench_generate.run(quick=args.quick))


if __name__ == "__main__":
    main()
