"""``scratchllm generate``: continue a prompt with a trained model directory (book 5.3)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from scratchllm.errors import ConfigError

DTYPES = {"auto": None, "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
          "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a model directory",
        description="Continue PROMPT with any model scratchllm opens: a run or model directory "
        "written by scratchllm, a Hugging Face GPT-2 / Llama 3 / Qwen3 directory, or a Hub "
        "name. Text streams to stdout as it is generated.",
    )
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--model", required=True,
                   help="model or run directory (e.g. runs/verdict), a Hugging Face directory, "
                   "or a Hub name such as gpt2 (read from the local cache when offline)")
    p.add_argument("--adapter", default=None,
                   help="LoRA adapter directory (PEFT layout, from scratchllm or peft) to merge "
                   "into --model before generating")
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default 50)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); higher = more random")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--min-p", type=float, default=None,
                   help="drop tokens below min_p x the top token's probability")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each step")
    p.add_argument("--no-eos-stop", action="store_true",
                   help="keep going after an end token (end of text, or a chat model's end of "
                   "turn such as <|eot_id|>)")
    p.add_argument("--stop", action="append", default=None, metavar="STRING",
                   help="stop when the generated text contains STRING (matched on text, even "
                   "across tokens; not printed); repeat for several")
    add_precision_flags(p)
    add_compile_flag(p)
    p.add_argument("--stats", action="store_true",
                   help="print load time, time to first token, prompt and decode tokens/s "
                   "and what the linear layers run on, on stderr when done")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    p.set_defaults(func=run)


def add_precision_flags(p: argparse.ArgumentParser) -> None:
    """--dtype and --quantize, the same for generate, chat and serve."""
    p.add_argument("--dtype", default="auto", type=str.lower, choices=sorted(DTYPES),
                   help="weights' dtype: auto (as saved, default), bfloat16/bf16, "
                   "float16/fp16, float32/fp32; sampling is always done in float32 (bf16 on "
                   "a CPU with AMX/AVX512-BF16: linear layers prepacked for oneDNN)")
    p.add_argument("--quantize", default=None, type=str.lower, choices=["int8"],
                   help="int8: every linear layer (the output head too) in int8, a quarter "
                   "of float32's weight bytes (about 2.5x its tokens/s on a CPU, see "
                   "benchmarks/decode.py); float32 activations, KV cache and sampling "
                   "(CUDA: needs torchao)")


def add_compile_flag(p: argparse.ArgumentParser) -> None:
    """--compile, for the one-row decoding of generate and chat."""
    p.add_argument("--compile", action="store_true",
                   help="compile the one-token decode step with torch.compile (CPU only, "
                   "needs a C++ compiler): tens of seconds once at load, then about 1.2x "
                   "(float32) to 1.4x (--quantize int8) the tokens/s; see README")


def check_compile_flags(args: argparse.Namespace) -> None:
    """--compile serves the KV-cached step; without the cache there is nothing to compile."""
    if args.compile and getattr(args, "no_cache", False):
        raise ConfigError("--compile compiles the KV-cached decode step, and --no-cache turns "
                          "the cache off; drop one of them")


def precision(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """``open_model``'s dtype and quantize for the flags; a note on stderr when bf16 will
    not be faster on this CPU."""
    from scratchllm.model.quantize import bf16_note

    dtype = DTYPES[args.dtype]
    note = bf16_note(dtype, device)
    if note:
        print(note, file=sys.stderr, flush=True)
    return {"dtype": dtype, "quantize": args.quantize}


def run(args: argparse.Namespace) -> int:
    from scratchllm.generate import DecodeStats, check_sampling_args, cut_at_stop_strings, stream
    from scratchllm.utils.device import resolve_device
    from scratchllm.weights.auto import open_model

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.stop is not None and not all(args.stop):
        raise ConfigError("--stop needs a non-empty STRING")
    check_compile_flags(args)
    # a typo'd flag is reported before a multi-GB model loads (and before any output)
    check_sampling_args(args.temperature, args.top_k, args.top_p, args.min_p)
    device = resolve_device(args.device)
    started = time.perf_counter()
    loaded = open_model(args.model, device=device, require_tokenizer=True,
                        adapter=args.adapter, inference_only=True, compile=args.compile,
                        **precision(args, device))
    load_seconds = time.perf_counter() - started
    stats = DecodeStats() if args.stats else None
    model, tokenizer = loaded.model, loaded.tokenizer
    # With the BOS the tokenizer's files ask for (Llama 3), never doubled.
    prompt_ids = tokenizer.encode_prompt(args.prompt, allowed_special="all")
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    pieces = stream(
        model, prompt_ids, args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        eos_id=None if args.no_eos_stop else loaded.eos_ids,
        use_cache=not args.no_cache, seed=args.seed, tokenizer=tokenizer,
        stop_strings=args.stop, stats=stats,
    )
    for piece in cut_at_stop_strings(pieces, args.stop or ()):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if stats is not None:
        from scratchllm.model.cpu_linear import describe_linears

        lines = [*stats.lines(load_seconds), f"linear layers:       {describe_linears(model)}"]
        if args.compile:
            lines.append(f"compile time:        {model.decode_compile_seconds:.2f} s "
                         "(inside the load time)")
        print("\n".join(lines), file=sys.stderr, flush=True)
    return 0
