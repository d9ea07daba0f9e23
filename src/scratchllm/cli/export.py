"""``scratchllm export``: write a trained model for transformers & co. (hf), llama.cpp (gguf)
or Ollama (ollama)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model for transformers (hf), llama.cpp (gguf) or Ollama",
        description="Convert a scratchllm model directory (or a training run's latest model) "
        "into a Hugging Face directory (config.json, safetensors weights, tokenizer files) "
        "that transformers' AutoModelForCausalLM.from_pretrained loads (--to hf), a GGUF "
        "file for llama.cpp (--to gguf), or a folder for `ollama create` (--to ollama).",
    )
    p.add_argument("model_dir", help="model or run directory, Hugging Face directory or Hub name")
    p.add_argument("--to", choices=["hf", "gguf", "ollama"], default="hf",
                   help="target format: hf (a transformers directory), gguf (one file for "
                   "llama.cpp) or ollama (a folder with model.gguf and a Modelfile)")
    p.add_argument("out", help="output directory (for --to gguf: a file path ending in "
                   ".gguf): new or empty (an earlier export is replaced only with --overwrite; "
                   "anything else is refused)")
    p.add_argument("--type", default=None, dest="gguf_type",
                   help="GGUF tensor type for --to gguf/ollama: f32, f16, bf16 or q8_0 "
                   "(default: the weights' own dtype)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier scratchllm export at OUT")
    p.add_argument("--shard-size", default=None,
                   help="split the weights into files of at most this size, e.g. 2GB")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.to in ("gguf", "ollama"):
        return run_gguf(args)
    if args.gguf_type is not None:
        from scratchllm.errors import ConfigError
        raise ConfigError("--type applies to --to gguf and --to ollama; a Hugging Face export "
                          "keeps the weights' dtype")
    from scratchllm.data.chat_templates import chat_template_for
    from scratchllm.utils.outputs import HF_EXPORT, check_output_dir
    from scratchllm.weights.auto import open_model
    from scratchllm.weights.hf_export import export_hf_dir, parse_size

    shard_size = parse_size(args.shard_size) if args.shard_size is not None else None
    check_output_dir(args.out, HF_EXPORT, overwrite=args.overwrite, what="OUT")  # before loading
    loaded = open_model(args.model_dir)
    out = export_hf_dir(loaded.model, args.out, loaded.tokenizer, shard_size=shard_size,
                        overwrite=args.overwrite, eos_ids=loaded.eos_ids,
                        chat_template=chat_template_for(loaded.metadata, loaded.tokenizer))
    print(f"exported {args.model_dir} -> {out} (Hugging Face format)")
    return 0


def run_gguf(args: argparse.Namespace) -> int:
    """--to gguf / --to ollama: checks the output path and type before loading the model."""
    from scratchllm.errors import ConfigError
    from scratchllm.weights.auto import open_model
    from scratchllm.export.gguf import export_gguf
    from scratchllm.weights.gguf_export import GGUF_TYPES, check_gguf_target

    if args.shard_size is not None:
        raise ConfigError("--shard-size applies to --to hf; a GGUF export is one file")
    if args.gguf_type is not None and args.gguf_type not in GGUF_TYPES:
        raise ConfigError(f"--type {args.gguf_type!r} is not a GGUF type here; choose one of "
                          f"{', '.join(GGUF_TYPES)}")
    if args.to == "gguf":
        check_gguf_target(args.out, overwrite=args.overwrite)
        loaded = open_model(args.model_dir, require_tokenizer=True)
        out = export_gguf(loaded, args.out, type_name=args.gguf_type, overwrite=args.overwrite)
        print(f"exported {args.model_dir} -> {out} (GGUF; run it with llama-cli -m {out})")
        return 0
    from scratchllm.utils.outputs import check_output_dir
    from scratchllm.export.ollama import OLLAMA_EXPORT, export_ollama

    check_output_dir(args.out, OLLAMA_EXPORT, overwrite=args.overwrite, what="OUT")
    loaded = open_model(args.model_dir, require_tokenizer=True)
    out = export_ollama(loaded, args.out, type_name=args.gguf_type, overwrite=args.overwrite)
    print(f"exported {args.model_dir} -> {out} (Ollama; create it with: ollama create NAME "
          f"-f {out}/Modelfile)")
    return 0
