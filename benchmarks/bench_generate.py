"""Greedy generation speed of GPT-2 small (124M, random weights) in tokens per second.

Batch 1, a 10-token prompt, 200 new tokens, fp32, torch's default thread count. Compares:

* ours with the KV cache (``scratchllm.generate.generate``), the default;
* ours without it (each step re-reads the whole context, like the book's loop);
* Hugging Face ``GPT2LMHeadModel.generate`` with its cache, on a copy of our weights;
* the book's ``llms_from_scratch.ch04.generate_text_simple`` on the book's own GPTModel.

Targets: ours cached >= 1.0x transformers and >= 4x ours uncached. The book's loop is slow
(a few tokens/s on 2 cores); ``--quick`` times it, and our uncached loop, on 30 new tokens.
Run: ``python benchmarks/bench_generate.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import torch

from scratchllm.generate import generate
from scratchllm.model import GPTConfig, GPTModel

PROMPT_LEN, NEW_TOKENS, SEED = 10, 200, 123


def _progress(name: str, tok_s: float) -> None:
    print(f"  ... {name}: {tok_s:.1f} tokens/s", file=sys.stderr, flush=True)


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def _hf_copy(ours: GPTModel):
    """GPT2LMHeadModel holding our weights (HF's Conv1D stores them transposed)."""
    import transformers

    cfg = ours.config
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
    )).eval()
    sd = hf.state_dict()
    sd["transformer.wte.weight"].copy_(ours.tok_emb.weight)
    sd["transformer.wpe.weight"].copy_(ours.pos_emb.weight)
    pairs = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_attn": "att.qkv",
             "attn.c_proj": "att.out_proj", "mlp.c_fc": "ff.fc1", "mlp.c_proj": "ff.fc2"}
    for i, block in enumerate(ours.trf_blocks):
        for theirs, mine in pairs.items():
            module = block.get_submodule(mine)
            weight = module.weight if theirs.startswith("ln_") else module.weight.T
            sd[f"transformer.h.{i}.{theirs}.weight"].copy_(weight)
            sd[f"transformer.h.{i}.{theirs}.bias"].copy_(module.bias)
    sd["transformer.ln_f.weight"].copy_(ours.final_norm.weight)
    sd["transformer.ln_f.bias"].copy_(ours.final_norm.bias)
    return hf


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def run(quick: bool = False) -> dict:
    slow_tokens = 30 if quick else NEW_TOKENS
    torch.manual_seed(SEED)
    # GPT-2's own layout (tied head, QKV bias) so transformers gets the very same weights.
    ours = GPTModel(GPTConfig.preset("gpt2-small", drop_rate=0.0, tie_weights=True,
                                     qkv_bias=True)).eval()
    prompt = torch.randint(0, ours.config.vocab_size, (1, PROMPT_LEN))
    results: dict = {"prompt_tokens": PROMPT_LEN, "new_tokens": NEW_TOKENS,
                     "threads": torch.get_num_threads()}

    hf = _hf_copy(ours) if _has_transformers() else None
    hf_kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                     use_cache=True, pad_token_id=0, attention_mask=torch.ones_like(prompt))
    cached = generate(ours, prompt, NEW_TOKENS)  # warm-up
    if hf is not None:
        with torch.no_grad():
            hf_out = hf.generate(prompt, **hf_kwargs)  # warm-up, and a parity check
        results["transformers_matches_ours"] = bool(torch.equal(hf_out, cached))
    # Alternate ours and transformers, best of 3 each, so a busy spell on a shared machine
    # does not land on one side only.
    ours_s, hf_s = float("inf"), float("inf")
    for _ in range(3):
        ours_s = min(ours_s, _best_seconds(lambda: generate(ours, prompt, NEW_TOKENS), 1))
        if hf is not None:
            with torch.no_grad():
                hf_s = min(hf_s, _best_seconds(lambda: hf.generate(prompt, **hf_kwargs), 1))
    results["ours_kv_cache_tok_s"] = NEW_TOKENS / ours_s
    results["transformers_tok_s"] = NEW_TOKENS / hf_s if hf is not None else float("nan")
    _progress("ours, KV cache", results["ours_kv_cache_tok_s"])
    _progress("transformers", results["transformers_tok_s"])

    uncached = generate(ours, prompt, slow_tokens, use_cache=False)
    assert torch.equal(uncached, cached[:, : PROMPT_LEN + slow_tokens]), "cache changed tokens"
    uncached_s = _best_seconds(
        lambda: generate(ours, prompt, slow_tokens, use_cache=False), repeats=1)
    results["ours_no_cache_tok_s"] = slow_tokens / uncached_s
    _progress("ours, no cache", results["ours_no_cache_tok_s"])

    try:
        from llms_from_scratch.ch04 import GPTModel as BookGPT
        from llms_from_scratch.ch04 import generate_text_simple

        torch.manual_seed(SEED)
        book = BookGPT({"vocab_size": 50257, "context_length": 1024, "emb_dim": 768,
                        "n_heads": 12, "n_layers": 12, "drop_rate": 0.0,
                        "qkv_bias": False}).eval()
        generate_text_simple(book, prompt, 2, 1024)  # warm-up
        book_s = _best_seconds(lambda: generate_text_simple(book, prompt, slow_tokens, 1024), 1)
        results["book_no_cache_tok_s"] = slow_tokens / book_s
    except ImportError:
        results["book_no_cache_tok_s"] = float("nan")
    results["slow_peers_new_tokens"] = slow_tokens
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="time the two uncached loops on 30 tokens instead of 200")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_report(run(quick=args.quick))


def print_report(r: dict) -> None:
    """The table, the parity check and, last, the headline line."""
    print(f"GPT-2 small, batch 1, {r['prompt_tokens']}-token prompt, greedy, "
          f"{r['threads']} threads")
    print(f"{'generator':<34}{'new tokens':>11}{'tokens/s':>10}")
    rows = [("ours, KV cache", NEW_TOKENS, r["ours_kv_cache_tok_s"]),
            ("ours, no cache", r["slow_peers_new_tokens"], r["ours_no_cache_tok_s"]),
            ("transformers generate (cache)", NEW_TOKENS, r["transformers_tok_s"]),
            ("book generate_text_simple", r["slow_peers_new_tokens"], r["book_no_cache_tok_s"])]
    for name, n, tok_s in rows:
        print(f"{name:<34}{n:>11}{tok_s:>10.1f}")
    if "transformers_matches_ours" in r:
        print(f"transformers tokens == ours: {r['transformers_matches_ours']}")
    cached = r["ours_kv_cache_tok_s"]
    print(f"kv cache speed-up: {cached / r['ours_no_cache_tok_s']:.2f}x ours uncached, "
          f"{cached / r['book_no_cache_tok_s']:.2f}x the book")
    hf = r["transformers_tok_s"]
    print(f"kv_cache_generate_tok_s: {cached:.1f} (transformers: {hf:.1f}, "
          f"ratio {cached / hf:.2f})")


if __name__ == "__main__":
    main()
