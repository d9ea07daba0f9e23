"""``scratchllm info``: a model's architecture, parameter count, memory and compute (book 4.6).

Everything is computed from the config, so even GPT-2 XL is described instantly without
allocating its weights.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from scratchllm.errors import ConfigError
from scratchllm.model.config import GPTConfig  # no torch: ``scratchllm --help`` stays fast


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="show a model preset's size, memory and FLOPs",
        description="Describe a GPT architecture: its hyperparameters, parameter count "
        "(embedding vs non-embedding), weight memory in fp32 and bf16, and FLOPs per token. "
        f"Presets: {', '.join(GPTConfig.preset_names())}, and the Llama 3 / Qwen3 presets "
        "`pretrain --preset` takes (llama3.2-1b, qwen3-0.6b, tiny-llama, ...).",
    )
    p.add_argument("--preset", default="gpt2-small",
                   help="architecture name (default gpt2-small)")
    p.add_argument("--tie-weights", action="store_true",
                   help="share the token embedding with the output head, as OpenAI's GPT-2 does")
    p.add_argument("--context-length", type=int, default=None,
                   help="override the preset's context length")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def describe(config: Any) -> dict[str, Any]:
    """Everything ``info`` reports, as plain JSON-ready values."""
    import torch  # noqa: PLC0415 (imported here, not when the CLI builds its parser)

    from scratchllm.model.stats import (  # noqa: PLC0415
        flops_per_token, model_memory_bytes, parameter_counts, training_flops_per_token,
    )

    counts = parameter_counts(config)
    memory = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n_bytes = model_memory_bytes(config, dtype)
        memory[name] = {"bytes": n_bytes, "MB": round(n_bytes / 1024**2, 2),
                        "GB": round(n_bytes / 1024**3, 2)}
    return {
        "config": config.to_dict(),
        "parameters": {
            "total": counts.total,
            "embedding": counts.embedding,
            "non_embedding": counts.non_embedding,
            "token_embedding": counts.token_embedding,
            "position_embedding": counts.position_embedding,
            "transformer_blocks": counts.blocks,
            "final_norm": counts.final_norm,
            "out_head": counts.out_head,
        },
        "memory": memory,
        "flops_per_token": {
            "seq_len": config.context_length,
            "forward": flops_per_token(config),
            "training": training_flops_per_token(config),
        },
    }


def _format_text(preset: str, info: dict[str, Any]) -> str:
    cfg, params, mem, flops = (info["config"], info["parameters"], info["memory"],
                               info["flops_per_token"])
    lines = [f"{preset}"]
    lines += [f"  {key:<22}{value}" for key, value in cfg.items()]
    lines.append("parameters")
    for key in ("total", "embedding", "non_embedding", "token_embedding",
                "position_embedding", "transformer_blocks", "final_norm", "out_head"):
        lines.append(f"  {key:<22}{params[key]:>16,}")
    lines.append("weight memory")
    for name, m in mem.items():
        lines.append(f"  {name:<22}{m['MB']:>13,.2f} MB {m['GB']:>9,.2f} GB")
    lines.append(f"FLOPs per token (seq_len {flops['seq_len']})")
    lines.append(f"  {'forward':<22}{flops['forward']:>16,}")
    lines.append(f"  {'training (3x)':<22}{flops['training']:>16,}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.tie_weights:
        overrides["tie_weights"] = True
    if args.context_length is not None:
        overrides["context_length"] = args.context_length
    from scratchllm.model.llama_config import LlamaConfig  # noqa: PLC0415 (imports torch)

    if args.preset.lower() in LlamaConfig.preset_names():
        config = LlamaConfig.preset(args.preset.lower(), **overrides)
    elif args.preset.lower() in GPTConfig.preset_names():
        config = GPTConfig.preset(args.preset, **overrides)
    else:
        names = [*GPTConfig.preset_names(), *LlamaConfig.preset_names()]
        raise ConfigError(f"unknown preset {args.preset!r}; choose one of: {', '.join(names)}")
    info = describe(config)
    if args.json:
        print(json.dumps({"preset": args.preset, **info}, indent=2))
    else:
        print(_format_text(args.preset, info))
    return 0
