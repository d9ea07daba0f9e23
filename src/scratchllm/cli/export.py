"""``scratchllm export``: write a trained model in Hugging Face format for transformers & co."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model directory in Hugging Face format",
        description="Convert a scratchllm model directory (or a training run's latest model) "
        "into a Hugging Face directory (config.json, safetensors weights, tokenizer files) "
        "that transformers' AutoModelForCausalLM.from_pretrained loads.",
    )
    p.add_argument("model_dir", help="scratchllm model directory or training run directory")
    p.add_argument("--to", choices=["hf"], default="hf", help="target format (hf)")
    p.add_argument("out", help="output directory (replaced atomically if it is an old export)")
    p.add_argument("--shard-size", default=None,
                   help="split the weights into files of at most this size, e.g. 2GB")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.train.checkpoint import load_model_dir
    from scratchllm.weights.hf_export import export_hf_dir, parse_size

    shard_size = parse_size(args.shard_size) if args.shard_size is not None else None
    model, tokenizer = load_model_dir(args.model_dir)
    out = export_hf_dir(model, args.out, tokenizer, shard_size=shard_size)
    print(f"exported {args.model_dir} -> {out} (Hugging Face format)")
    return 0
