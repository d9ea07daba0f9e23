"""``scratchllm finetune ppo``: RLHF with PPO or GRPO against a reward (book ch. 8)."""

from __future__ import annotations

import argparse

from scratchllm.cli.finetune_instruct import report_stop


def register(methods: argparse._SubParsersAction) -> None:
    p = methods.add_parser(
        "ppo",
        help="RLHF: PPO or GRPO against a reward model or function (ch. 8)",
        description="Sample answers to prompts, score them with a reward model or a Python "
        "reward function, and move the policy towards higher scores with PPO (value head, "
        "per-token KL penalty, GAE) or GRPO (--algorithm grpo: groups of answers, no value "
        "model), staying near the starting model through a KL term. Usually applied to an "
        "instruction-tuned model. PPO's value head is a linear layer on the policy's last "
        "hidden state, initialised to zero (not from the reward model) unless --value-head "
        "gives an earlier run's; it is saved as OUT/value_head.safetensors beside the policy "
        "(OUT/latest, an ordinary model directory) and in every checkpoint.",
    )
    p.add_argument("--policy", required=True, metavar="DIR",
                   help="model to start from (and the reference): model/run dir or HF dir")
    reward = p.add_mutually_exclusive_group(required=True)
    reward.add_argument("--reward-model", metavar="DIR", help="a `finetune reward` output")
    reward.add_argument("--reward-fn", metavar="FILE.py:NAME",
                        help="your Python function NAME(prompt: str, response: str) -> float")
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="instruction JSON or a text file with one prompt per line; either is "
                   "split 85/5/10 and the test split is answered into test_responses.json")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run directory: metrics.jsonl, reward.png, latest/, checkpoints/, "
                   "test_responses.json; must be new or empty")
    p.add_argument("--algorithm", choices=["ppo", "grpo"], default="ppo")
    p.add_argument("--max-steps", type=int, default=100, help="rollout batches (default 100)")
    p.add_argument("--rollout-batch", type=int, default=8, help="prompts per step (default 8)")
    p.add_argument("--group-size", type=int, default=4,
                   help="GRPO: answers sampled per prompt (default 4)")
    p.add_argument("--minibatch", type=int, default=4,
                   help="rollouts per gradient step (default 4)")
    p.add_argument("--ppo-epochs", type=int, default=4,
                   help="passes over each step's rollouts (default 4; GRPO's mu)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    p.add_argument("--kl-coef", type=float, default=0.05,
                   help="weight of the KL to the starting model (default 0.05)")
    p.add_argument("--kl-target", type=float, metavar="NATS",
                   help="PPO: adapt --kl-coef so the logged kl (per answer) tracks this "
                   "(default: fixed)")
    p.add_argument("--kl-estimator", choices=["k1", "k3"], default="k1",
                   help="PPO's per-token KL penalty (default k1; GRPO always uses k3). The "
                   "logged kl is the k3 estimate in both algorithms, kl_k1 the k1 one")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature (pure sampling: no top-k/top-p; default 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer (default 64)")
    p.add_argument("--missing-eos-penalty", type=float, default=1.0,
                   help="subtracted from the score of an answer that never ends (default 1.0)")
    p.add_argument("--vf-coef", type=float, default=0.1, help="PPO value-loss weight (default 0.1)")
    p.add_argument("--clip", type=float, default=0.2, help="PPO/GRPO ratio clip (default 0.2)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip (default 1.0)")
    p.add_argument("--prompt-style", choices=["alpaca", "phi3", "raw"],
                   help="prompt template (default: the one --policy was instruction-tuned "
                   "with, else alpaca; raw: the text as is)")
    p.add_argument("--value-head", metavar="FILE",
                   help="PPO: start the value head from this value_head.safetensors (an earlier "
                   "run's) instead of zero")
    p.add_argument("--lora-rank", type=int,
                   help="train LoRA adapters of this rank instead of all weights")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scale alpha (default 16)")
    p.add_argument("--seed", type=int, default=123, help="random seed (default 123)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="checkpoint every N steps (default: only on Ctrl-C / SIGTERM)")
    p.add_argument("--resume", action="store_true",
                   help="continue the newest checkpoint in --out (same settings as before)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier scratchllm output at --out (never other files)")
    p.add_argument("--no-test-responses", action="store_true", help="skip answering the test split")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.finetune.rl import finetune_rl

    lora = None if args.lora_rank is None else {"rank": args.lora_rank, "alpha": args.lora_alpha}
    result = finetune_rl(
        args.policy, args.prompts, args.out, reward_model=args.reward_model,
        reward_fn=args.reward_fn, prompt_style=args.prompt_style, lora=lora, device=args.device,
        precision=args.precision, test_responses=not args.no_test_responses,
        overwrite=args.overwrite, resume=args.resume, progress=not args.quiet,
        value_head=args.value_head,
        algorithm=args.algorithm, max_steps=args.max_steps, rollout_batch=args.rollout_batch,
        group_size=args.group_size, minibatch=args.minibatch, ppo_epochs=args.ppo_epochs,
        lr=args.lr, kl_coef=args.kl_coef, kl_target=args.kl_target,
        kl_estimator=args.kl_estimator, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, missing_eos_penalty=args.missing_eos_penalty,
        vf_coef=args.vf_coef, clip=args.clip, grad_clip=args.grad_clip, seed=args.seed,
        save_every=args.save_every)
    stopped = report_stop(result)
    if stopped is not None:
        return stopped
    last, nan = result.last, float("nan")
    print(f"{args.algorithm} steps {result.steps} | reward {last.get('reward_mean', nan):.4f} | "
          f"kl {last.get('kl', nan):.4f} | eos rate {last.get('eos_rate', nan):.2f}")
    print(f"model: {result.model_dir}")
    if result.value_head_file is not None:
        print(f"value head: {result.value_head_file}")
    if result.responses_file is not None:
        print(f"test responses: {result.responses_file}")
    return 0
