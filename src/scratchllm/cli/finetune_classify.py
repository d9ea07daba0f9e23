"""``scratchllm finetune classify``: fine-tune a model directory into a text classifier (book ch. 6)."""

from __future__ import annotations

import argparse

from scratchllm.cli.finetune_instruct import add_loop_args, loop_options, report_stop
from scratchllm.finetune.trainable import TRAINABLE_CHOICES


def register(methods: argparse._SubParsersAction) -> None:
    p = methods.add_parser(
        "classify",
        help="fine-tune for text classification (book ch. 6, e.g. spam)",
        description="Replace the model's output head with a class head and fine-tune it on "
        "labelled texts: TSV without header (label<TAB>text), CSV with text,label columns, or "
        "JSONL. Writes OUT/model (for `scratchllm classify`), best/ (the best validation "
        "epoch), metrics.jsonl, loss.png, accuracy.png and results.json.",
    )
    p.add_argument("--model", required=True,
                   help="pretrained model: scratchllm model/run dir, Hugging Face dir or Hub name")
    p.add_argument("--data", required=True, help="labelled data file (.tsv, .csv or .jsonl)")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier scratchllm output at --out (never other files)")
    p.add_argument("--epochs", type=int, default=5,
                   help="passes over the training split (5); with --resume, more extends the run")
    p.add_argument("--trainable", choices=TRAINABLE_CHOICES, default="last-block",
                   help="what to train: head, last-block (default, the book's), all, lora")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r (8)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha; scale alpha/r (16)")
    p.add_argument("--no-balance", action="store_true",
                   help="keep every example instead of undersampling to the rarest class")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step (8)")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (5e-5)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (0.1)")
    p.add_argument("--eval-every", type=int, default=50, help="steps between loss estimates (50)")
    p.add_argument("--seed", type=int, default=123, help="seed for sampling, split and init (123)")
    p.add_argument("--max-length", type=int, default=None,
                   help="pad/limit texts to N tokens (default: longest text)")
    p.add_argument("--truncate", action="store_true",
                   help="cut texts longer than --max-length (or the context) instead of failing")
    p.add_argument("--labels", default=None,
                   help="comma-separated label names in id order (default: sorted)")
    p.add_argument("--text-column", default="text", help="CSV/JSONL text field (text)")
    p.add_argument("--label-column", default="label", help="CSV/JSONL label field (label)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    p.add_argument("--precision", default="auto", help="auto (default), fp32, bf16, fp16")
    p.add_argument("--keep-best", action="store_true",
                   help="save the epoch with the best validation accuracy, not the last")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_loop_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.finetune.classify import RESULTS_FILE, finetune_classifier

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    result = finetune_classifier(
        args.model, args.data, args.out, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, trainable=args.trainable,
        balance=not args.no_balance, seed=args.seed, max_length=args.max_length,
        truncate=args.truncate, eval_every=args.eval_every, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, labels=labels, text_column=args.text_column,
        label_column=args.label_column, device=args.device, precision=args.precision,
        overwrite=args.overwrite, keep_best=args.keep_best, progress=not args.quiet,
        **loop_options(args))
    stopped = report_stop(result)
    if stopped is not None:
        return stopped
    accuracies = ", ".join(f"{split} {report['accuracy'] * 100:.2f}%"
                           for split, report in result.metrics.items())
    print(f"accuracy: {accuracies}")
    print(f"classifier saved to {result.model_dir}; metrics in {result.out_dir / RESULTS_FILE}")
    return 0
