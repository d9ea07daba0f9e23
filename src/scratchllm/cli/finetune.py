"""``scratchllm finetune {classify,instruct,dpo,ppo,reward}``: the book's stage 3 (ch. 6-8).

Each fine-tuning method lives in its own module exposing ``register(subparsers)``, like the
top-level commands; this module only groups them under one ``finetune`` command.
"""

from __future__ import annotations

import argparse
import importlib

FINETUNE_MODULES: list[str] = [
    "scratchllm.cli.finetune_classify",
    "scratchllm.cli.finetune_instruct",
    "scratchllm.cli.finetune_dpo",
    "scratchllm.cli.finetune_ppo",
    "scratchllm.cli.finetune_reward",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model: classify, instruct, dpo, reward or ppo",
        description="Fine-tune a pretrained model directory for classification (book ch. 6), "
        "instruction following (ch. 7), preferences (DPO), or train a reward model and align "
        "with it by PPO/GRPO (ch. 8).",
    )
    methods = p.add_subparsers(dest="method", metavar="METHOD")
    for name in FINETUNE_MODULES:
        importlib.import_module(name).register(methods)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
