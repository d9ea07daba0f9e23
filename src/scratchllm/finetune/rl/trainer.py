"""The RL loop: sample, score, update, log; checkpoints that ``--resume`` continues exactly.

Each step takes the next ``rollout_batch`` training prompts (a seeded epoch order,
``finetune.batching.EpochBatches``), samples answers (GRPO: ``group_size`` per prompt),
scores them, and runs ``ppo_step`` or ``grpo_step``. Every random draw of a step comes from
generators seeded by (seed, step), and dropout is off, so a step is a pure function of the
weights, the optimizer state and the step number: a checkpoint holds those (plus the value
head and the adaptive KL coefficient in its data state) and a resumed run repeats the
uninterrupted one bit for bit on the CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scratchllm.errors import ConfigError, DataError
from scratchllm.finetune.batching import EpochBatches
from scratchllm.finetune.rl.grpo import grpo_step
from scratchllm.finetune.rl.losses import AdaptiveKLController
from scratchllm.finetune.rl.plots import PLOT_FILE, plot_rl
from scratchllm.finetune.rl.policy import Learner, Reference, ValueHead, emb_dim_of
from scratchllm.finetune.rl.ppo import ppo_step
from scratchllm.finetune.rl.prompts import Prompt
from scratchllm.finetune.rl.reward import RewardSource, score_with_penalty
from scratchllm.finetune.rl.rollout import encode_prompt, sample_rollout, step_generator
from scratchllm.finetune.rl.settings import RLSettings
from scratchllm.finetune.rl.value_file import VALUE_HEAD_FILE, load_value_head, save_value_head
from scratchllm.finetune.best import merged_copy
from scratchllm.finetune.resume_check import check_recipe
from scratchllm.finetune.runs import MODEL_SUBDIR, RunSetup, fresh_start_notice, model_saver
from scratchllm.model.lora import lora_layers
from scratchllm.train.metrics import Progress, read_metrics
from scratchllm.train.run_control import check_not_past_end, report_stopped, run_steps
from scratchllm.train.state import TrainingState, load_checkpoint, save_checkpoint
from scratchllm.train.steps import autocast_for, grad_scaler_for
from scratchllm.weights.auto import generation_header


@dataclass
class TrainerResult:
    step: int
    last: dict[str, Any]
    interrupted: bool = False
    stop_signal: int | None = None
    checkpoint: Path | None = None
    best = None  # finish_run's interface: RL keeps no best/ (there is no validation loss)


class RLTrainer:
    """Owns the policy, value head, reference and optimizer of one run (see module docstring)."""

    def __init__(self, setup: RunSetup, reward: RewardSource, prompts: list[Prompt],
                 settings: RLSettings, recipe: dict[str, Any], *, style: str, lora: bool,
                 progress: bool = True, value_head: Path | None = None) -> None:
        settings.check()
        self.setup, self.reward, self.prompts, self.settings = setup, reward, prompts, settings
        self.recipe = {**recipe, **settings.recipe()}
        policy = self.policy = setup.model
        self.reference = Reference(policy, lora=lora)  # before any update: the starting model
        policy.eval()  # no dropout anywhere (finetune.rl.policy)
        eos = tuple(setup.eos_ids) or (setup.tokenizer.eot_id,)
        self.eos_ids = eos
        keep = policy.config.context_length - settings.max_new_tokens
        if keep < 1:
            raise ConfigError(f"--max-new-tokens {settings.max_new_tokens} leaves no room for a "
                              f"prompt in the {policy.config.context_length}-token context")
        self.prompt_ids = [encode_prompt(p, setup.tokenizer, style, keep) for p in prompts]
        if len(prompts) < settings.rollout_batch:
            raise DataError(f"only {len(prompts)} training prompts (85% of --prompts; the "
                            f"rest are held out) for --rollout-batch {settings.rollout_batch}; "
                            "use a smaller --rollout-batch or more prompts")
        self.batches = EpochBatches(len(prompts), settings.rollout_batch, seed=settings.seed)
        self.value_head = None
        params = [p for p in policy.parameters() if p.requires_grad]
        # PPO's critic starts at zero (finetune.rl.policy), or from an earlier run's file.
        self.value_init = "zero" if value_head is None else str(value_head)
        if settings.algorithm == "ppo":
            self.value_head = ValueHead(emb_dim_of(policy), device=setup.device)
            if value_head is not None:
                load_value_head(self.value_head, value_head)
            params += list(self.value_head.parameters())
        self.autocast = autocast_for(setup.precision, setup.device)
        self.learner = Learner(params, lr=settings.lr, weight_decay=settings.weight_decay,
                               grad_clip=settings.grad_clip, autocast=self.autocast,
                               scaler=grad_scaler_for(setup.precision, setup.device))
        self.kl_ctl = AdaptiveKLController(settings.kl_coef, settings.kl_target,
                                           settings.kl_horizon)
        self.state = TrainingState()
        self.checkpoint: Path | None = None
        self.last: dict[str, Any] = {}
        self.progress = Progress(settings.max_steps, every=10) if progress else None

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)

    # ------------------------------------------------------------------------ checkpoints
    def data_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"prompts": self.batches.state_dict(self.state.step),
                                 "kl": self.kl_ctl.state_dict(), "last": self.last}
        if self.value_head is not None:
            state["value_head"] = {k: v.detach().cpu().clone()
                                   for k, v in self.value_head.state_dict().items()}
        return state

    def save(self) -> None:
        self.state.data_state = self.data_state()
        learner, lora = self.learner, bool(lora_layers(self.policy))
        self.checkpoint = save_checkpoint(
            self.setup.out_dir, model=self.policy, optimizer=learner.optimizer,
            scheduler=learner.scheduler, state=self.state, tokenizer=self.setup.tokenizer,
            train_config=self.recipe, val_loss=None, keep_last=self.settings.keep_last,
            scaler=learner.scaler, update_best=False, metadata=self.setup.model_metadata,
            generation=generation_header(self.setup.eos_ids), link_latest=not lora)
        if lora:
            # The checkpoint keeps LoRA's layout for --resume; latest/ gets the merged policy,
            # which generate, chat and export open like any model directory.
            model_saver(self.setup)(self.setup.out_dir / MODEL_SUBDIR, merged_copy(self.policy),
                                    {"step": self.state.step})
        self.write_value_head()
        self.plot()

    def value_head_path(self) -> Path | None:
        """``OUT/value_head.safetensors`` beside ``latest/`` (PPO; see ``rl.value_file``)."""
        return None if self.value_head is None else self.setup.out_dir / VALUE_HEAD_FILE

    def write_value_head(self) -> Path | None:
        path = self.value_head_path()
        if path is not None:
            save_value_head(self.value_head, path, init=self.value_init, step=self.state.step)
        return path

    def resume(self, checkpoint: Path) -> None:
        record = check_recipe(checkpoint, self.recipe)
        check_not_past_end(checkpoint, int((record.get("state") or {}).get("step", 0)),
                           self.settings.max_steps)
        learner = self.learner
        state = load_checkpoint(checkpoint, model=self.policy, optimizer=learner.optimizer,
                                scheduler=learner.scheduler, scaler=learner.scaler)
        data = state.data_state or {}
        self.batches.check_state(data.get("prompts") or {}, state.step, str(checkpoint))
        self.kl_ctl.load_state_dict(data["kl"])
        self.last = dict(data.get("last") or {})
        if self.value_head is not None:
            self.value_head.load_state_dict(data["value_head"])
        self.state, self.checkpoint = state, checkpoint
        self.setup.log.truncate_after(state.step)
        self.say(f"resumed from {checkpoint} at step {state.step}")

    def plot(self) -> None:
        plot_rl(read_metrics(self.setup.log.path), self.setup.out_dir / PLOT_FILE,
                title=self.setup.out_dir.name)

    # ------------------------------------------------------------------------ one step
    def step_prompts(self, step: int) -> tuple[list[Prompt], list[list[int]]]:
        repeat = self.settings.group_size if self.settings.algorithm == "grpo" else 1
        chosen = [i for i in self.batches.indices(step) for _ in range(repeat)]
        return [self.prompts[i] for i in chosen], [self.prompt_ids[i] for i in chosen]

    def one_step(self, start_time: float) -> dict[str, Any]:
        s, step, device = self.settings, self.state.step, self.setup.device
        tic = time.perf_counter()
        prompts, ids = self.step_prompts(step)
        with self.autocast():
            rollout = sample_rollout(self.policy, self.setup.tokenizer, prompts, ids,
                                     max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                     eos_ids=self.eos_ids,
                                     generator=step_generator(s.seed, step, device))
        raw, scores = score_with_penalty(self.reward, prompts, rollout.responses,
                                         rollout.ended, s.missing_eos_penalty)
        shuffle = step_generator(s.seed, step, torch.device("cpu"), stream=1)
        if s.algorithm == "ppo":
            stats = ppo_step(self.policy, self.value_head, self.reference, self.learner, rollout,
                             scores, s, self.kl_ctl, shuffle, self.autocast)
        else:
            stats = grpo_step(self.policy, self.reference, self.learner, rollout, scores, s,
                              shuffle, self.autocast)
        lengths = rollout.lengths.float()
        self.state.step += 1
        self.state.tokens_seen += int(lengths.sum())
        spread = float(raw.std()) if len(raw) > 1 else 0.0
        record = {"event": "train", "step": self.state.step, "tokens_seen": self.state.tokens_seen,
                  "reward_mean": float(raw.mean()), "reward_std": spread,
                  "score_mean": float(scores.mean()), **stats,
                  "response_len_mean": float(lengths.mean()),
                  "eos_rate": float(rollout.ended.float().mean()),
                  "seconds": round(time.perf_counter() - tic, 3),
                  "elapsed": round(time.perf_counter() - start_time, 3)}
        self.setup.log.write(record)
        self.last = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        if self.progress is not None:
            self.progress.advance(self.state.step, f"reward {record['reward_mean']:.3f} | "
                                  f"kl {record['kl']:.3f} | len {record['response_len_mean']:.1f}")
        return record

    # ------------------------------------------------------------------------ the run
    def run(self) -> TrainerResult:
        s = self.settings
        if self.setup.checkpoint is not None:
            self.resume(self.setup.checkpoint)
        elif notice := fresh_start_notice(self.setup):
            self.say(notice)
        if self.progress is not None:
            self.progress.start_step = self.state.step
        trainable = sum(p.numel() for p in self.learner.params)
        self.say(f"{s.algorithm.upper()}: training {trainable:,} parameters on "
                 f"{self.setup.device} ({self.setup.precision}) for {s.max_steps} steps of "
                 f"{s.rollouts_per_step} rollouts")
        end = s.max_steps if s.stop_at is None else min(s.stop_at, s.max_steps)
        start_time = time.perf_counter()
        stopped, stop_signal = run_steps(lambda: self.one_step(start_time),
                                         lambda: self.state.step, end=end, total=s.max_steps,
                                         save=self.save, save_every=s.save_every)
        if self.progress is not None:
            self.progress.close()
        if stopped:
            report_stopped(self.progress, stop_signal, self.state.step, self.checkpoint)
        else:
            self.plot()
        return TrainerResult(self.state.step, dict(self.last), stopped, stop_signal,
                             self.checkpoint)
