"""``scratchllm download``: fetch pretrained weights from the Hugging Face Hub (book 5.5)."""

from __future__ import annotations

import argparse

from scratchllm.weights.hub import HUB_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "download",
        help="download pretrained weights (gpt2, gpt2-medium, ... or a Hub repo id)",
        description="Download a model's safetensors weights, config and tokenizer files from "
        "the Hugging Face Hub into a local cache (interrupted downloads resume). Short names: "
        f"{', '.join(HUB_NAMES)}; anything else is a repo id such as owner/name. Prints the "
        "directory, which `scratchllm generate --model` and scratchllm.load() accept. "
        "huggingface_hub draws its own progress bars on stderr; set "
        "HF_HUB_DISABLE_PROGRESS_BARS=1 to hide them.",
    )
    p.add_argument("name", help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl | REPO_ID")
    p.add_argument("--dir", default=None,
                   help="cache directory (default: the Hugging Face cache, $HF_HOME)")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.weights.hub import download

    path = download(args.name, cache_dir=args.dir, revision=args.revision)
    print(path)
    return 0
