"""``scratchllm classify``: label texts with a fine-tuned classifier (book 6.8)."""

from __future__ import annotations

import argparse

from scratchllm.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify texts with a fine-tuned classifier",
        description="Print `label<TAB>probability` for each TEXT, one line each, using a "
        "classifier written by `scratchllm finetune classify` (its OUT folder or OUT/model).",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="classifier directory")
    p.add_argument("texts", metavar="TEXT", nargs="+", help="text(s) to classify")
    p.add_argument("--truncate", action="store_true",
                   help="cut texts longer than the model's context instead of failing")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.finetune.classifier_model import classify_texts, load_classifier
    from scratchllm.model.cpu_matmul import onednn_linears
    from scratchllm.utils.device import resolve_device

    if any(not t.strip() for t in args.texts):
        raise ConfigError("empty TEXT given; pass the text(s) to classify in quotes")
    model, tokenizer, info = load_classifier(args.model, device=resolve_device(args.device))
    with onednn_linears():  # plain nn.Linear forwards: oneDNN on AMD CPUs (model.cpu_matmul)
        results = classify_texts(model, tokenizer, list(args.texts), info["labels"],
                                 truncate=args.truncate)
    for label, prob in results:
        print(f"{label}\t{prob:.4f}")
    return 0
