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
    p.add_argument("model_dir", help="model or run directory, Hugging Face directory or Hub name")
    p.add_argument("--to", choices=["hf"], default="hf", help="target format (hf)")
    p.add_argument("out", help="output directory: new or empty (an earlier export is replaced "
                   "only with --overwrite; a folder holding other files is refused)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier scratchllm export at OUT")
    p.add_argument("--shard-size", default=None,
                   help="split the weights into files of at most this size, e.g. 2GB")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.data.chat_templates import chat_template_for
    from scratchllm.utils.outputs import HF_EXPORT, check_output_dir
    from scratchllm.weights.auto import open_model
    from scratchllm.weights.hf_export import export_hf_dir, parse_size

    shard_size = parse_size(args.shard_size) if args.shard_size is not None else None
    check_output_dir(args.out, HF_EXPORT, overwrite=args.overwrite)  # before loading anything
    loaded = open_model(args.model_dir)
    out = export_hf_dir(loaded.model, args.out, loaded.tokenizer, shard_size=shard_size,
                        overwrite=args.overwrite, eos_ids=loaded.eos_ids,
                        chat_template=chat_template_for(loaded.metadata, loaded.tokenizer))
    print(f"exported {args.model_dir} -> {out} (Hugging Face format)")
    return 0
