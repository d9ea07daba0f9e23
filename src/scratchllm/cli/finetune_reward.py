"""``scratchllm finetune reward``: train a reward model on preference pairs (book ch. 8)."""

from __future__ import annotations

import argparse

from scratchllm.cli.finetune_instruct import add_loop_args, loop_options, report_stop


def register(methods: argparse._SubParsersAction) -> None:
    p = methods.add_parser(
        "reward",
        help="train a reward model on preference pairs (ch. 8, for PPO/GRPO)",
        description="Put a one-output head on a model and train it so the chosen response "
        "scores higher than the rejected one (-log sigmoid(r_chosen - r_rejected)), on JSON "
        "entries with instruction, input, chosen and rejected (85/5/10 split). Writes "
        "OUT/model (the reward model, scores normalised to mean 0 / std 1 on the reference "
        "answers), best/, metrics.jsonl, loss.png, accuracy.png and results.json.",
    )
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model to start from: scratchllm model/run dir, Hugging Face dir or Hub name")
    p.add_argument("--data", required=True, metavar="FILE", help="preference JSON list")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier scratchllm output at --out (never other files)")
    p.add_argument("--epochs", type=int, default=1,
                   help="passes over the training pairs (1); with --resume, more extends the run")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (8)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (1e-5)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (0.01)")
    p.add_argument("--train-mode", choices=["full", "last-block", "lora", "head"], default="full",
                   help="what to train: full (default), last-block, lora, head")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r (8)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha; scale alpha/r (16)")
    p.add_argument("--margin", type=float, default=0.0,
                   help="the chosen answer must win by this much: -log sigmoid(dr - margin) (0)")
    p.add_argument("--center-coef", type=float, default=0.0,
                   help="reward centering: add coef * (r_chosen + r_rejected)^2 (0; e.g. 0.01)")
    p.add_argument("--pooling", choices=["last", "mean"], default="last",
                   help="where the score is read: last = the end token after the response "
                   "(default, as TRL), mean = averaged over the response tokens (generalises "
                   "better when answers differ by a few words)")
    p.add_argument("--ensemble", type=int, default=1, metavar="K",
                   help="train K reward models (seeds SEED..SEED+K-1) and save their average "
                   "as one model directory: lower variance, harder to over-optimise (1)")
    p.add_argument("--prompt-style", choices=["alpaca", "phi3"],
                   help="prompt template (default: the one --model was fine-tuned with, "
                   "else alpaca)")
    p.add_argument("--max-length", type=int,
                   help="longest pair text in tokens, cut from the start (default: context)")
    p.add_argument("--reference-responses", metavar="FILE",
                   help="normalise scores on these answers (test_responses.json of the policy) "
                   "instead of the training split's chosen and rejected responses")
    p.add_argument("--reference-key", default="model_response",
                   help="field of --reference-responses holding the answer (model_response)")
    p.add_argument("--keep-best", action="store_true",
                   help="save the weights with the best validation pairwise accuracy, not the last")
    p.add_argument("--shuffle-split", action="store_true",
                   help="shuffle before the 85/5/10 split (the book keeps the file order)")
    p.add_argument("--seed", type=int, default=123, help="random seed (123)")
    p.add_argument("--eval-every", type=int, default=10, help="evaluate every N steps (10)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_loop_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.finetune.classify import RESULTS_FILE
    from scratchllm.finetune.reward import finetune_reward

    result = finetune_reward(
        args.model, args.data, args.out, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, train_mode=args.train_mode,
        margin=args.margin, center_coef=args.center_coef, pooling=args.pooling,
        prompt_style=args.prompt_style,
        max_length=args.max_length, shuffle_split=args.shuffle_split,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        reference_responses=args.reference_responses, reference_key=args.reference_key,
        keep_best=args.keep_best, seed=args.seed, eval_every=args.eval_every,
        device=args.device, precision=args.precision, progress=not args.quiet,
        overwrite=args.overwrite, ensemble=args.ensemble, **loop_options(args))
    stopped = report_stop(result)
    if stopped is not None:
        return stopped
    print("pairwise accuracy: " + ", ".join(
        f"{split} {m['accuracy'] * 100:.2f}% (margin {m['margin']:.3f})"
        for split, m in result.metrics.items() if m["accuracy"] is not None))
    norm = result.normalization
    print(f"scores normalised on {norm['count']} answers ({norm['reference']}): "
          f"raw mean {norm['mean']:.4f}, std {norm['std']:.4f}")
    print(f"reward model saved to {result.model_dir}; metrics in {result.out_dir / RESULTS_FILE}")
    return 0
