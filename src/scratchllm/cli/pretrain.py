"""``scratchllm pretrain``: train a GPT from scratch (book ch. 5). No arguments = the main job.

With no arguments it trains a small GPT on the bundled short story *The Verdict* in a few CPU
minutes, writes the run to ``runs/verdict`` and prints a sample continuation. Values come from
the defaults, then ``--config FILE``, then ``--set KEY=VALUE`` and the other flags.

Several processes: ``torchrun --nproc_per_node=N -m scratchllm pretrain ...`` (DDP by default,
``--distributed fsdp`` to shard the model); ``--batch-size`` is then the global batch.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a GPT (default: a small model on the bundled story, about a CPU minute)",
        description="Pretrain a GPT on a text file, a token folder from `scratchllm prepare`, "
        "or (default) the bundled short story The Verdict. Writes OUT/metrics.jsonl, "
        "OUT/loss.png, OUT/checkpoints/step-N/, OUT/best/ and OUT/latest/ (load it with "
        "`scratchllm generate --model OUT`). Ctrl-C or SIGTERM saves a checkpoint and exits "
        "130 or 143; --resume continues it exactly.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML/TOML/JSON config (see configs/)")
    p.add_argument("--data", help="text file, prepared .bin file or folder (default: the bundled story)")
    p.add_argument("--preset", help="model preset: gpt2-small/medium/large/xl, tiny, "
                   "llama3.2-1b, qwen3-0.6b, tiny-llama, ... (`scratchllm info` lists them)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--epochs", type=int, help="passes over the training data")
    p.add_argument("--batch-size", type=int, help="sequences per optimizer step")
    p.add_argument("--micro-batch-size", type=int,
                   help="sequences per forward pass; batch-size/micro-batch-size = accumulation steps")
    p.add_argument("--context-length", type=int, help="tokens per training window")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int, help="random seed (default 123)")
    p.add_argument("--eval-every", type=int, help="evaluate every N steps")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (0 = only at the end)")
    p.add_argument("--sample-every", type=int, help="print a sample every N steps (0 = only at the end)")
    p.add_argument("--prompt", dest="sample_prompt", help="prompt of the printed samples")
    p.add_argument("--out", dest="out_dir", help="run directory (default runs/verdict)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto = bf16 on capable GPUs, else fp32")
    p.add_argument("--compile", nargs="?", const=True, default=None, metavar="{model,blocks}",
                   help="torch.compile the whole model (bare flag or 'model'), or one transformer "
                   "block compiled once for all of them ('blocks': a third of the compile time; "
                   "evaluation and samples stay eager; slower than eager on a 2-core CPU)")
    p.add_argument("--distributed", choices=["auto", "ddp", "fsdp", "none"],
                   help="under torchrun: ddp (auto's choice when WORLD_SIZE > 1) or fsdp "
                   "(shards weights, gradients and optimizer state)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue OUT's newest checkpoint (with its saved config unless --config)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="delete OUT's previous run before starting")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, value in YAML syntax (e.g. --set model.n_layers=6)")
    p.set_defaults(func=run)


_FLAG_KEYS = ("data", "preset", "max_steps", "epochs", "batch_size", "micro_batch_size",
              "context_length", "lr", "seed", "eval_every", "save_every", "sample_every",
              "sample_prompt", "out_dir", "device", "precision", "compile", "distributed", "resume",
              "overwrite")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["model.n_layers=6", "lr=3e-4"]`` -> ``{"model": {"n_layers": 6}, "lr": 0.0003}``."""
    from scratchllm.errors import ConfigError
    from scratchllm.train.config import load_yaml

    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        value = load_yaml(raw) if raw else None
        head, _, sub = key.partition(".")
        if sub:
            values.setdefault(head, {})[sub] = value
        else:
            values[key] = value
    return values


def build_config(args: argparse.Namespace):
    """Defaults < config file (or the resumed run's saved config) < --set < flags."""
    from pathlib import Path

    from scratchllm.errors import ConfigError
    from scratchllm.train.config import TrainConfig, read_config_file
    from scratchllm.train.state import latest_checkpoint, load_train_config

    flags = {k: getattr(args, k) for k in _FLAG_KEYS if getattr(args, k, None) is not None}
    values: dict[str, Any] = {}
    if args.config:
        values = read_config_file(args.config)
    elif flags.get("resume"):
        newest = latest_checkpoint(Path(flags.get("out_dir", TrainConfig.out_dir)))
        values = dict(load_train_config(newest) or {}) if newest else {}
        values.pop("overwrite", None)
    sets = parse_sets(args.sets)
    if isinstance(sets.get("model"), dict):
        values["model"] = {**(values.get("model") or TrainConfig().model), **sets.pop("model")}
    values.update(sets)
    if "epochs" in flags:
        values["max_steps"] = None  # an explicit --epochs beats a max_steps from the file
    if "batch_size" in flags and "micro_batch_size" not in flags:
        micro = values.get("micro_batch_size", TrainConfig.micro_batch_size)
        if flags["batch_size"] % micro:
            values["micro_batch_size"] = flags["batch_size"]
    values.update(flags)
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as err:  # the value may come from the file: name it
        if args.config:
            raise ConfigError(f"{err} (settings from {args.config} and the command line)") from None
        raise


def run(args: argparse.Namespace) -> int:
    from scratchllm.train.loop import train

    config = build_config(args)
    result = train(config)
    if result.interrupted:  # Ctrl-C or SIGTERM: saved; exit like the shell does for a signal
        return 128 + int(result.stop_signal or signal.SIGINT)
    if not result.is_main:  # rank 0 reports for the whole torchrun job
        return 0
    losses = ""
    if result.train_loss is not None:
        losses = f"; train loss {result.train_loss:.3f}, val loss {result.val_loss:.3f}"
    print(f"done: step {result.step}/{result.total_steps}, {result.tokens_seen:,} tokens "
          f"in {result.seconds:.0f}s{losses}", file=sys.stderr)
    print(f"run saved in {result.run_dir}; try: scratchllm generate --model {result.run_dir} "
          f"\"{config.sample_prompt}\"", file=sys.stderr)
    for text in result.samples:
        print(text)
    return 0
