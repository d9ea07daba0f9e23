"""``scratchllm finetune dpo``: preference tuning with DPO (the book's ch. 7 bonus)."""

from __future__ import annotations

import argparse

from scratchllm.cli.finetune_instruct import add_common_args, lora_settings, loop_options, report_stop


def register(methods: argparse._SubParsersAction) -> None:
    p = methods.add_parser(
        "dpo",
        help="preference tuning with DPO (ch. 7 bonus)",
        description="Direct Preference Optimization on JSON entries with instruction, input, "
        "chosen and rejected; usually applied to an instruction-tuned model. The test split "
        "is then answered greedily into OUT/test_responses.json (compare it with finetune "
        "instruct's by `scratchllm evaluate reward --responses A B`).",
    )
    add_common_args(p, epochs=1, lr=5e-6, weight_decay=0.01, inherit_style=True)
    p.add_argument("--beta", type=float, default=0.1,
                   help="how far the policy may drift from the reference (default 0.1)")
    p.add_argument("--sum-logprobs", action="store_true",
                   help="sum response log-probs (DPO paper) instead of averaging (book)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="longest test answer in tokens (default 256)")
    p.add_argument("--no-test-responses", action="store_true",
                   help="skip answering the test split")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.finetune.dpo import finetune_dpo

    result = finetune_dpo(
        args.model, args.data, args.out, beta=args.beta, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        prompt_style=args.prompt_style, max_length=args.max_length,
        average_logprobs=not args.sum_logprobs, lora=lora_settings(args), seed=args.seed,
        device=args.device, precision=args.precision, eval_every=args.eval_every,
        shuffle_split=args.shuffle_split, progress=not args.quiet,
        overwrite=args.overwrite, generate_test=not args.no_test_responses,
        max_new_tokens=args.max_new_tokens, **loop_options(args))
    stopped = report_stop(result)
    if stopped is not None:
        return stopped
    print(f"train loss {result.train_loss:.4f} | val loss {result.val_loss:.4f} | "
          f"val reward margin {result.val_reward_margin:.4f} | "
          f"val reward accuracy {result.val_reward_accuracy:.2f}")
    print(f"model: {result.model_dir}")
    if result.responses_file is not None:
        print(f"test responses: {result.responses_file}")
    return 0
