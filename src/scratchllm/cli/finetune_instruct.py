"""``scratchllm finetune instruct``: instruction fine-tuning (book ch. 7) from the command line."""

from __future__ import annotations

import argparse
import signal


def add_common_args(p: argparse.ArgumentParser, *, epochs: int, lr: float,
                    weight_decay: float, inherit_style: bool = False) -> None:
    """Options shared by `finetune instruct` and `finetune dpo` (``inherit_style``: the
    prompt style defaults to the one the model was instruction-tuned with)."""
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model to start from: scratchllm model/run dir, Hugging Face dir or Hub name")
    p.add_argument("--data", required=True, metavar="FILE", help="JSON list of entries")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run directory: metrics.jsonl, loss.png, latest/ (the tuned model), "
                   "best/ (best validation loss), checkpoints/; must be new or empty")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier scratchllm output at --out (never other files)")
    p.add_argument("--epochs", type=int, default=epochs,
                   help=f"passes over the data (default {epochs}); with --resume, more "
                   "extends the run")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    p.add_argument("--lr", type=float, default=lr, help=f"AdamW learning rate (default {lr})")
    p.add_argument("--weight-decay", type=float, default=weight_decay,
                   help=f"AdamW weight decay (default {weight_decay})")
    p.add_argument("--prompt-style", choices=["alpaca", "phi3"],
                   default=None if inherit_style else "alpaca",
                   help="prompt template (default: the one --model was instruction-tuned "
                   "with, else alpaca)" if inherit_style else
                   "prompt template (default alpaca, book 7.2)")
    p.add_argument("--max-length", type=int, help="truncate examples (default: context length)")
    p.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank instead of all weights")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scale alpha (default 16)")
    p.add_argument("--shuffle-split", action="store_true",
                   help="shuffle before the 85/5/10 split (the book keeps the file order)")
    p.add_argument("--seed", type=int, default=123, help="random seed (default 123)")
    p.add_argument("--eval-every", type=int, default=5, help="evaluate every N steps (default 5)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_loop_args(p)


def add_loop_args(p: argparse.ArgumentParser) -> None:
    """The training-loop options every `finetune` method shares (scratchllm.finetune.loop)."""
    p.add_argument("--resume", action="store_true",
                   help="continue the newest checkpoint in --out (same settings as before; "
                   "a larger --epochs extends the run)")
    p.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="checkpoint every N steps into OUT/checkpoints (default: only on Ctrl-C)")
    p.add_argument("--keep-last", type=int, default=3, metavar="N",
                   help="checkpoints to keep (default 3)")
    p.add_argument("--micro-batch-size", type=int, metavar="N",
                   help="examples per forward pass; --batch-size / N steps are accumulated "
                   "(default: the whole batch)")
    p.add_argument("--warmup-steps", type=int, default=0, metavar="N",
                   help="linear learning-rate warmup steps (default 0)")
    p.add_argument("--min-lr", type=float, metavar="LR",
                   help="cosine-decay the learning rate to LR (default: constant, the book's)")
    p.add_argument("--grad-clip", type=float, metavar="NORM",
                   help="clip the gradient norm to NORM (default: no clipping, the book's)")


def loop_options(args: argparse.Namespace) -> dict:
    """The add_loop_args values as keyword arguments of the finetune functions."""
    return {"resume": args.resume, "save_every": args.save_every, "keep_last": args.keep_last,
            "micro_batch_size": args.micro_batch_size, "warmup_steps": args.warmup_steps,
            "min_lr": args.min_lr, "grad_clip": args.grad_clip}


def report_stop(result) -> int | None:
    """For a run stopped by Ctrl-C or SIGTERM (checkpoint saved): the shell's exit status for
    that signal (130 / 143); None for a finished run. The library has said how to continue
    (``train.run_control.report_stopped``), once."""
    if not getattr(result, "interrupted", False):
        return None
    return 128 + int(result.stop_signal or signal.SIGINT)


def lora_settings(args: argparse.Namespace) -> dict | None:
    if args.lora_rank is None:
        return None
    return {"rank": args.lora_rank, "alpha": args.lora_alpha}


def register(methods: argparse._SubParsersAction) -> None:
    p = methods.add_parser(
        "instruct",
        help="instruction fine-tuning (book ch. 7)",
        description="Fine-tune a model directory on instruction/input/output JSON (book ch. 7), "
        "then answer the test split greedily into OUT/test_responses.json (score it with "
        "`scratchllm evaluate judge`).",
    )
    add_common_args(p, epochs=2, lr=5e-5, weight_decay=0.1)
    p.add_argument("--mask-prompt", action="store_true",
                   help="learn only the responses, not the instructions (exercise 7.2)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="longest test answer in tokens (default 256)")
    p.add_argument("--no-test-responses", action="store_true",
                   help="skip answering the test split")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.finetune.instruct import finetune_instruct

    result = finetune_instruct(
        args.model, args.data, args.out, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, prompt_style=args.prompt_style,
        mask_prompt=args.mask_prompt, max_length=args.max_length, lora=lora_settings(args),
        seed=args.seed, device=args.device, precision=args.precision,
        eval_every=args.eval_every, max_new_tokens=args.max_new_tokens,
        shuffle_split=args.shuffle_split, generate_test=not args.no_test_responses,
        progress=not args.quiet, overwrite=args.overwrite, **loop_options(args))
    stopped = report_stop(result)
    if stopped is not None:
        return stopped
    print(f"examples: {result.n_train} train, {result.n_val} val, {result.n_test} test")
    print(f"train loss {result.train_loss:.3f} | val loss {result.val_loss:.3f}")
    print(f"model: {result.model_dir}")
    if result.responses_file is not None:
        print(f"test responses: {result.responses_file}")
    return 0
