"""``scratchllm prepare``: tokenize text files into train/val token files (book 2.6, at scale)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="tokenize text files into train.bin/val.bin for pretraining",
        description="Tokenize text files (and directories of .txt files, searched recursively) "
        "in parallel into OUT/train.bin and OUT/val.bin: flat arrays of token ids with a JSON "
        "sidecar each (tokenizer, dtype, token count, sha256, sources). Train/val are split by "
        "document with a seeded shuffle; an end-of-text token separates documents.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text file or directory")
    p.add_argument("--out", required=True,
                   help="output directory: new or empty (created if missing)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier `scratchllm prepare` output at --out")
    p.add_argument("--tokenizer", default="gpt2",
                   help="gpt2 (default), a BPE .json saved by BPETokenizer.save(), or a Hugging "
                   "Face tokenizer.json or the model folder holding it; it is recorded in the "
                   "sidecars, and pretrain --data OUT reads it from there")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the text for validation, 0 for none (default 0.1)")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes (default: CPU cores, at most 8)")
    p.add_argument("--seed", type=int, default=1234,
                   help="seed of the train/val split (default 1234)")
    p.add_argument("--chunk-kb", type=int, default=None,
                   help="piece size in KiB for splitting big files (default: automatic)")
    p.set_defaults(func=run)


def _progress_shower(stream):
    """A progress callback for prepare_corpus: a tqdm bar over the pieces on a terminal, a plain
    line at most every half second in a log (the piece count is known at the first call)."""
    from scratchllm.utils.progress import Progress

    holder: dict[str, Progress] = {}

    def show(p) -> None:
        if "bar" not in holder:
            holder["bar"] = Progress(p.pieces_total, every=1, interval=0.5, stream=stream,
                                     unit="piece", desc="prepare")
        holder["bar"].advance(p.pieces_done,
                              f"{p.files_total} files | {p.bytes_done / 1e6:.1f}/"
                              f"{p.bytes_total / 1e6:.1f} MB | {p.tokens:,} tokens | "
                              f"{p.mb_per_s:.2f} MB/s")

    def close() -> None:
        if "bar" in holder:
            holder["bar"].close()

    return show, close


def run(args: argparse.Namespace) -> int:
    from scratchllm.data import prepare_corpus

    show, close = _progress_shower(sys.stderr)
    try:
        result = prepare_corpus(
            args.inputs, args.out, tokenizer=args.tokenizer, val_fraction=args.val_fraction,
            workers=args.workers, seed=args.seed,
            chunk_bytes=args.chunk_kb * 1024 if args.chunk_kb is not None else None,
            progress=show, overwrite=args.overwrite,
        )
    finally:
        close()
    train, val = result.num_tokens["train"], result.num_tokens["val"]
    print(f"prepared {len(result.files)} file(s), {result.bytes_read / 1e6:.2f} MB in "
          f"{result.seconds:.1f}s -> {result.out_dir}")
    print(f"  train.bin: {train:,} tokens ({result.dtype})")
    print(f"  val.bin:   {val:,} tokens" if val else "  val.bin:   none (--val-fraction 0)")
    return 0
