"""Peak memory of ``scratchllm generate`` on a Llama-3.2-1B-shaped model, before and after.

The KV cache used to be preallocated for the whole context window: 131,072 positions for
Llama 3.2, i.e. 16 layers x 2 (keys, values) x 8 heads x 64 dims x 131,072 x 2 bytes = 4 GiB
of bf16 at batch 1, for a prompt of a few dozen tokens. It is now sized to prompt + new tokens.

The script builds a random model of Llama 3.2 1B's shape (bf16 weights, 1.24B parameters,
filled in place so building it needs no fp32 copy) with a 128,256-token byte-level tokenizer,
saves it as a scratchllm model directory, then runs ``scratchllm generate`` on it twice, each
in a fresh process: with this checkout's code, and with the code of ``--before`` (a commit,
checked out into a temporary ``git worktree`` that is removed afterwards). Each process
reports its own peak resident set (VmHWM) and peak virtual size (VmPeak): on a CPU, pages
of a buffer that nothing writes are never resident, so the old cache shows mostly in VmPeak;
on a GPU every byte of it is allocated.

Run: ``python benchmarks/generate_memory.py --before <commit> [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The quick brown fox jumps over the lazy dog. " * 3
NEW_TOKENS = 16

# Runs in the child: the CLI in-process, then its own peak memory as one JSON line on stderr.
# Every KVCache made is remembered, to add up the bytes its buffers allocated.
_CHILD = """
import json, sys, torch
torch.set_num_threads({threads})
from scratchllm.model import kv_cache
caches, init = [], kv_cache.KVCache.__init__
def remember(self, *args, **kwargs):
    init(self, *args, **kwargs)
    caches.append(self)
kv_cache.KVCache.__init__ = remember
from scratchllm.cli.main import main
code = main(sys.argv[1:])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
kib = lambda key: int(status[key].split()[0])
cache = sum(t.untyped_storage().nbytes() for c in caches for t in c._keys + c._values
            if t is not None)
print("MEMORY " + json.dumps({{"code": code, "hwm_kib": kib("VmHWM"), "peak_kib": kib("VmPeak"),
                              "cache_bytes": cache}}), file=sys.stderr)
"""


def _tokenizer(vocab_size: int):
    """A byte-level BPE with exactly ``vocab_size`` tokens: every id decodes to text."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    from scratchllm.tokenizers.byte_level import bytes_to_unicode
    from scratchllm.tokenizers.hf import HFTokenizer

    alphabet = list(bytes_to_unicode().values())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    letters = [c for c in alphabet if c.isalpha() and c.isascii()]
    n = 0
    while len(vocab) < vocab_size - 1:
        word, k = "", n
        while True:
            word += letters[k % len(letters)]
            k //= len(letters)
            if not k:
                break
        vocab.setdefault("Ġ" + word, len(vocab))
        n += 1
    backend = tokenizers.Tokenizer(models.BPE(vocab, []))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|end_of_text|>"])
    return HFTokenizer(backend, {"eos_token": "<|end_of_text|>"})


@torch.no_grad()
def build_model_dir(out: Path) -> Path:
    """Save a random bf16 Llama-3.2-1B-shaped model (meta device, then filled in place)."""
    from scratchllm.model import LlamaConfig, LlamaModel
    from scratchllm.weights.model_dir import save_model_dir

    config = LlamaConfig.preset("llama3.2-1b")
    with torch.device("meta"):
        model = LlamaModel(config)
    model.to_empty(device="cpu")
    if config.tie_weights:  # to_empty gives every module its own tensor: tie them again
        model.out_head.weight = model.tok_emb.weight
    gen = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or \
                name == "final_norm.weight":
            param.fill_(1.0)
        else:
            param.normal_(0.0, 0.02, generator=gen)
    model.reset_rope_buffers(torch.device("cpu"))
    tokenizer = _tokenizer(config.vocab_size)
    return save_model_dir(out, model.eval(), tokenizer=tokenizer)


def measure(src: Path, model_dir: Path, threads: int) -> dict:
    """Run ``scratchllm generate`` with the package under ``src``; its peak memory in GiB."""
    env = dict(os.environ, PYTHONPATH=str(src))
    argv = [sys.executable, "-c", _CHILD.format(threads=threads), "generate", PROMPT,
            "--model", str(model_dir), "--max-new-tokens", str(NEW_TOKENS), "--no-eos-stop",
            "--device", "cpu"]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    lines = [line for line in done.stderr.splitlines() if line.startswith("MEMORY ")]
    if done.returncode != 0 or not lines or json.loads(lines[-1][len("MEMORY "):])["code"]:
        raise SystemExit(f"generate failed with {src}:\n{done.stderr[-2000:]}")
    report = json.loads(lines[-1][len("MEMORY "):])
    return {"rss_gib": report["hwm_kib"] / 2**20, "virtual_gib": report["peak_kib"] / 2**20,
            "cache_mib": report["cache_bytes"] / 2**20, "seconds": seconds,
            "text": done.stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="commit whose code is the baseline")
    parser.add_argument("--keep", type=Path, default=None,
                        help="build the model directory here and keep it (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genmem-") as tmp:
        model_dir = args.keep or Path(tmp) / "llama3.2-1b-random"
        if not (model_dir / "config.json").is_file():
            print(f"building {model_dir} ...", file=sys.stderr, flush=True)
            build_model_dir(model_dir)
        old = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old),
                        args.before], check=True, capture_output=True)
        try:
            before = measure(old / "src", model_dir, args.threads)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)],
                           check=True, capture_output=True)
        after = measure(REPO / "src", model_dir, args.threads)
        weights_gib = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**30
    print(f"Llama-3.2-1B shape, random bf16 weights, batch 1, {NEW_TOKENS} new tokens, "
          f"{args.threads} threads, CPU")
    print(f"{'code':<26}{'peak RSS GiB':>13}{'peak virtual GiB':>17}{'KV cache MiB':>14}"
          f"{'seconds':>9}")
    for name, r in [(f"before ({args.before[:10]})", before), ("after (this checkout)", after)]:
        print(f"{name:<26}{r['rss_gib']:>13.2f}{r['virtual_gib']:>17.2f}{r['cache_mib']:>14.1f}"
              f"{r['seconds']:>9.1f}")
    print(f"same text: {before['text'] == after['text']}")
    print(f"weights on disk: {weights_gib:.2f} GiB")
    print(f"peak virtual memory ratio: {after['virtual_gib'] / before['virtual_gib']:.3f}")
    print(f"kv_cache_allocated_mib: {after['cache_mib']:.1f} (before: {before['cache_mib']:.1f}, "
          f"ratio {after['cache_mib'] / before['cache_mib']:.5f})")
    print(f"generate_peak_rss_gib: {after['rss_gib']:.2f} (before: {before['rss_gib']:.2f}, "
          f"ratio {after['rss_gib'] / before['rss_gib']:.3f})")


if __name__ == "__main__":
    main()
