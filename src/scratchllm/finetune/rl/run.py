"""``finetune_rl``: PPO or GRPO against a reward model or a reward function, as one call.

The run directory is a fine-tuning run's (``finetune.runs``): ``metrics.jsonl`` (one
``train`` record per step: ``reward_mean``, ``kl``, ``penalised_reward``, ``entropy``,
``clipfrac``, ``approx_kl``, ``value_loss`` (PPO), ``response_len_mean``, ``eos_rate``, ...),
``reward.png``, ``checkpoints/`` (``save_every``, Ctrl-C, SIGTERM; ``resume`` continues
exactly), ``latest/`` (the final policy, LoRA merged, for ``generate``/``chat``),
``value_head.safetensors`` (PPO's critic, beside the policy: ``rl.value_file``),
``adapter/`` with LoRA, and ``test_responses.json`` (the held-out test split of the prompts,
JSON or text, answered greedily, as ``finetune instruct`` writes it) for ``evaluate reward``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchllm.errors import ConfigError, MissingFileError
from scratchllm.finetune.instruct import RESPONSES_FILE, generate_responses
from scratchllm.finetune.rl.prompts import Prompt, check_prompt_style, load_prompts
from scratchllm.finetune.rl.reward import RewardSource, open_reward_source
from scratchllm.finetune.rl.rollout import encode_prompt
from scratchllm.finetune.rl.settings import RLSettings
from scratchllm.finetune.rl.trainer import RLTrainer
from scratchllm.finetune.runs import (finish_run, maybe_apply_lora, source_name, start_run,
                                     tuned_prompt_style)
from scratchllm.generate import generate_batch
from scratchllm.utils.atomic import atomic_write_json
from scratchllm.utils.device import resolve_device


@dataclass
class RLResult:
    out_dir: Path
    model_dir: Path
    responses_file: Path | None
    steps: int
    last: dict[str, Any]              # the last step's metrics record
    interrupted: bool = False         # stopped early (Ctrl-C, SIGTERM, stop_at): resume=True
    stop_signal: int | None = None
    value_head_file: Path | None = None  # PPO: OUT/value_head.safetensors


def _reward_name(reward_model, reward_fn, reward) -> str:
    if reward_model is not None:
        return source_name(reward_model)
    if reward_fn is not None:
        path, _, name = str(reward_fn).rpartition(":")
        return f"{source_name(path)}:{name}"
    return type(reward).__name__


def answer_test_prompts(model, tokenizer, prompts: list[Prompt], style: str, *,
                        max_new_tokens: int, batch_size: int, progress: bool,
                        eos_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Greedy answers to the held-out prompts, as ``finetune instruct`` writes them: each
    entry (``instruction``, ``input``, ...) plus ``model_response``. A ``raw`` prompt is fed
    as its text, the way the policy saw it during RL."""
    entries = [p.entry for p in prompts]
    if style != "raw":
        return generate_responses(model, tokenizer, entries, style=style,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  progress=progress, eos_ids=eos_ids)
    keep = model.config.context_length - 1  # room for at least one new token
    answers: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids = [encode_prompt(p, tokenizer, style, keep) for p in chunk]
        new_ids = generate_batch(model, ids, max_new_tokens, temperature=0.0,
                                 eos_id=list(eos_ids))
        answers += [{**p.entry, "model_response": tokenizer.decode(n).strip()}
                    for p, n in zip(chunk, new_ids)]
    return answers


def finetune_rl(policy: str | os.PathLike, prompts_file: str | os.PathLike,
                out_dir: str | os.PathLike, *, reward_model: str | os.PathLike | None = None,
                reward_fn: str | None = None, reward: RewardSource | None = None,
                prompt_style: str | None = None, lora: dict | None = None,
                device: str | None = "auto", precision: str = "auto",
                shuffle_split: bool = False, test_responses: bool = True,
                test_max_new_tokens: int | None = None, overwrite: bool = False,
                resume: bool = False, progress: bool = True,
                value_head: str | os.PathLike | None = None, **settings: Any) -> RLResult:
    """Align ``policy`` (a model or run directory) with PPO or GRPO; write ``out_dir``.

    The reward is one of ``reward_model`` (a ``finetune reward`` output), ``reward_fn``
    (``FILE.py:NAME``, a function ``(prompt, response) -> float``) or ``reward`` (any object
    with ``score(prompts, responses) -> tensor``, for Python callers). ``settings`` are
    ``RLSettings`` fields (``algorithm="grpo"``, ``max_steps``, ``kl_coef``, ...); ``lora``
    is a dict of ``apply_lora`` settings, e.g. ``{"rank": 8, "alpha": 16}``.

    PPO's value head starts at zero (not from the reward model: ``rl.policy``), or from
    ``value_head``, the ``value_head.safetensors`` an earlier PPO run saved beside its policy.
    """
    # None: the format the policy was instruction-tuned with (else the book's Alpaca)
    prompt_style = check_prompt_style(prompt_style or tuned_prompt_style(policy) or "alpaca")
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(RLSettings)})
    if unknown:
        raise ConfigError(f"unknown RL setting(s) {unknown}; see RLSettings")
    config = RLSettings(**settings)
    config.check()
    given = [x is not None for x in (reward_model, reward_fn, reward)]
    if sum(given) != 1:
        raise ConfigError("give exactly one reward: --reward-model DIR or --reward-fn FILE.py:NAME")
    if value_head is not None:
        if config.algorithm != "ppo":
            raise ConfigError("--value-head starts PPO's critic; GRPO has no value model")
        value_head = Path(value_head).expanduser()
        if not value_head.is_file():
            raise MissingFileError(f"value head {value_head} not found; pass the "
                                   "value_head.safetensors an earlier PPO run wrote")
    train, test = load_prompts(prompts_file, prompt_style, shuffle_split=shuffle_split,
                               seed=config.seed)
    torch_device = resolve_device(device)
    source = reward if reward is not None else open_reward_source(
        reward_model=reward_model, reward_fn=reward_fn, device=torch_device)
    setup = start_run(policy, out_dir, device=device, precision=precision, seed=config.seed,
                      overwrite=overwrite, resume=resume)
    if prompt_style != "raw":
        setup.model_metadata["prompt_style"] = prompt_style  # what chat and export read
    maybe_apply_lora(setup.model, lora)  # the trainer's reference: adapters off, or a copy
    recipe = {"method": config.algorithm, "model": source_name(policy),
              "prompts": source_name(prompts_file), "prompt_style": prompt_style,
              "reward": _reward_name(reward_model, reward_fn, reward), "lora": lora,
              "shuffle_split": shuffle_split,
              "value_head": None if value_head is None else source_name(value_head)}
    trainer = RLTrainer(setup, source, train, config, recipe, style=prompt_style,
                        lora=lora is not None, progress=progress, value_head=value_head)
    result = trainer.run()
    if result.interrupted:
        return RLResult(setup.out_dir, setup.out_dir / "latest", None, result.step, result.last,
                        True, result.stop_signal, trainer.value_head_path())
    metadata = {**trainer.recipe, "steps": result.step,
                **{k: result.last.get(k) for k in ("reward_mean", "kl")}}
    saved = finish_run(setup, result, lora=lora, metadata=metadata)
    value_file = trainer.write_value_head()
    responses_path = None
    if test_responses and test:
        answers = answer_test_prompts(setup.model, setup.tokenizer, test, prompt_style,
                                      max_new_tokens=test_max_new_tokens or config.max_new_tokens,
                                      batch_size=config.rollout_batch, progress=progress,
                                      eos_ids=trainer.eos_ids)
        responses_path = atomic_write_json(setup.out_dir / RESPONSES_FILE, answers)
    return RLResult(setup.out_dir, saved, responses_path, result.step, result.last,
                    value_head_file=value_file)
