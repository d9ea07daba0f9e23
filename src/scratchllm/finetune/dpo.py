"""Direct Preference Optimization (Rafailov et al. 2023; the book's ch. 7 DPO bonus).

DPO skips the reward model of RLHF: it raises the policy's log-probability of the chosen
response relative to a frozen copy of the starting model (the *reference*), and lowers that
of the rejected one. With r = beta * (log pi(y|x) - log pi_ref(y|x)) as the implicit reward,
the loss is -log sigmoid(r_chosen - r_rejected): zero gradient pressure once chosen answers
are clearly preferred, ln 2 while policy and reference still agree.

Policy and reference are both run without dropout (eval mode) whenever their log-probabilities
are compared, in training steps too. Dropout in the policy alone would make its log-probs a
noisy, biased estimate of the model's own, so the implicit rewards would be nonzero (and the
loss not ln 2) while the two models are still equal; running the reference with dropout instead
would add noise to a quantity that should stay fixed. Switching dropout off for both is the
usual choice for DPO; it gives up dropout's regularisation, which the short runs DPO needs do
not miss. (LoRA's own dropout is switched off with it.)

Sequence log-probabilities are *averaged* over the response tokens by default, as the book's
``compute_logprobs`` does (long and short answers weigh the same); ``average=False`` sums
them, as the DPO paper defines it. They are computed a few positions at a time
(``finetune.logprobs``), never as a (2B, T, vocab) fp32 log-softmax.

The reference's log-probabilities are computed once per example before training and kept
with the examples (``finetune.dpo_reference``): each step then runs the policy alone.
``cache_reference=False`` runs a reference model at every step instead (the LoRA base with
adapters off under LoRA, a frozen copy otherwise).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.data.instruction import check_style, split_entries
from scratchllm.data.preference import PreferenceDataset, load_preference_data, preference_collate
from scratchllm.errors import ConfigError, DataError
from scratchllm.finetune.dpo_reference import (
    cache_reference_logprobs,
    frozen_copy,
    reference_model,
    with_reference,
)
from scratchllm.finetune.instruct import RESPONSES_FILE, check_answer_length, generate_responses
from scratchllm.finetune.logprobs import pair_logprobs, sequence_logprobs  # noqa: F401 (re-export)
from scratchllm.finetune.loop import FinetuneLoop, LoopSettings
from scratchllm.finetune.runs import (
    source_name,
    eval_loader,
    finish_run,
    maybe_apply_lora,
    model_saver,
    plot_run,
    start_prompted_run,
    tuned_prompt_style,
)
from scratchllm.train.steps import autocast_for
from scratchllm.utils.atomic import atomic_write_json


def dpo_losses(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
               beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair, chosen rewards, rejected rewards); rewards are detached."""
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen rewards, rejected rewards); rewards are detached, per example."""
    losses, chosen, rejected = dpo_losses(policy_chosen_logps, policy_rejected_logps,
                                          ref_chosen_logps, ref_rejected_logps, beta)
    return losses.mean(), chosen, rejected


def dpo_terms(policy: nn.Module, reference: nn.Module | None, batch: dict[str, torch.Tensor], *,
              beta: float, average: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair (losses, chosen rewards, rejected rewards) of one batch; the reference's
    log-probs come from the batch when cached there (``dpo_reference.with_reference``)."""
    policy_chosen, policy_rejected = pair_logprobs(policy, batch, average=average)
    if "reference_chosen" in batch:
        ref_chosen, ref_rejected = batch["reference_chosen"], batch["reference_rejected"]
    else:
        if reference is None:
            raise ValueError("no cached reference log-probs in the batch and no reference model")
        with torch.no_grad():
            ref_chosen, ref_rejected = pair_logprobs(reference, batch, average=average)
    return dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


def dpo_batch(policy: nn.Module, reference: nn.Module | None, batch: dict[str, torch.Tensor], *,
              beta: float, average: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO loss of one batch and its reward statistics (margin and accuracy)."""
    losses, chosen_r, rejected_r = dpo_terms(policy, reference, batch, beta=beta, average=average)
    stats = {"reward_margin": float((chosen_r - rejected_r).mean()),
             "reward_accuracy": float((chosen_r > rejected_r).float().mean())}
    return losses.mean(), stats


class DPOTask:
    """The DPO loss summed over pairs; reward margin and accuracy logged with every step."""

    dropout = False  # policy and reference compared without dropout (module docstring)

    def __init__(self, policy: nn.Module, reference: nn.Module | None, train_set: PreferenceDataset,
                 collate, evals: dict, *, beta: float, average: bool, device: torch.device,
                 eval_batches: int, save, plot) -> None:
        self.policy, self.reference, self.train_set, self.collate_fn = policy, reference, train_set, collate
        self.evals, self.beta, self.average, self.device = evals, beta, average, device
        self.eval_batches, self.save_model, self.plot = eval_batches, save, plot
        self.size = len(train_set)

    def on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self.collate_fn([self.train_set[i] for i in indices])

    def measure(self, batch) -> tuple[int, int]:
        return len(batch["chosen_inputs"]), int(batch["chosen_mask"].sum() + batch["rejected_mask"].sum())

    def loss_sum(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        losses, chosen_r, rejected_r = dpo_terms(self.policy, self.reference, self.on_device(batch),
                                                 beta=self.beta, average=self.average)
        return losses.sum(), {"reward_margin": float((chosen_r - rejected_r).sum()),
                              "reward_accuracy": float((chosen_r > rejected_r).sum())}

    def evaluate(self) -> dict[str, float]:
        """Loss, reward margin and accuracy over the first ``eval_batches`` of each split."""
        out = {}
        for name, data in self.evals.items():
            rows = [dpo_batch(self.policy, self.reference, self.on_device(b), beta=self.beta,
                              average=self.average)
                    for b in itertools.islice(iter(data), self.eval_batches)]
            if not rows:
                continue
            out[f"{name}_loss"] = sum(float(loss) for loss, _ in rows) / len(rows)
            for key in ("reward_margin", "reward_accuracy"):
                out[f"{name}_{key}"] = sum(s[key] for _, s in rows) / len(rows)
        return out

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return {}

    def score(self, event: str, record: dict) -> tuple[float, ...] | None:
        val = record.get("val_loss")
        return (-val,) if event == "eval" and val is not None else None


def check_responses_fit(train_set: PreferenceDataset, collate, data_file, max_length: int
                        ) -> None:
    """Refuse a run in which truncation leaves no response token to score: DPO would log
    ln 2 forever and save the model unchanged."""
    if len(train_set) == 0:
        raise DataError(f"{data_file}: the 85/5/10 split leaves no training pair; DPO needs "
                        f"at least 2 preference records (rate more answers or add pairs)")
    for start in range(0, len(train_set), 64):
        batch = collate([train_set[i] for i in range(start, min(start + 64, len(train_set)))])
        if bool(batch["chosen_mask"].any(dim=1).logical_and(
                batch["rejected_mask"].any(dim=1)).any()):
            return
    longest = max((pair["chosen"]["prompt_len"] for pair in train_set.items), default=0)
    raise DataError(f"{data_file}: at --max-length {max_length} every training pair is cut "
                    f"before its responses begin (prompts are up to {longest} tokens), so DPO "
                    f"would learn nothing; raise --max-length above the prompt length")


@dataclass
class DPOResult:
    out_dir: Path
    model_dir: Path
    train_loss: float
    val_loss: float
    val_reward_margin: float
    val_reward_accuracy: float
    steps: int = 0
    interrupted: bool = False         # stopped early (Ctrl-C, SIGTERM, stop_at): resume=True
    stop_signal: int | None = None    # the signal that stopped it, if one did
    responses_file: Path | None = None  # OUT/test_responses.json, as finetune instruct writes


def finetune_dpo(model_dir: str | Path, data_file: str | Path, out_dir: str | Path, *,
                 beta: float = 0.1, epochs: int = 1, batch_size: int = 8, lr: float = 5e-6,
                 weight_decay: float = 0.01, prompt_style: str | None = None,
                 max_length: int | None = None, average_logprobs: bool = True,
                 lora: dict | None = None, seed: int = 123, device: str | None = "auto",
                 precision: str = "auto", eval_every: int = 5, eval_batches: int = 5,
                 shuffle_split: bool = False, progress: bool = True,
                 overwrite: bool = False, resume: bool = False,
                 micro_batch_size: int | None = None, warmup_steps: int = 0,
                 min_lr: float | None = None, grad_clip: float | None = None,
                 save_every: int = 0, keep_last: int = 3,
                 stop_at: int | None = None, cache_reference: bool = True,
                 generate_test: bool = True, max_new_tokens: int = 256) -> DPOResult:
    """Preference-tune an (instruction-tuned) model directory with DPO; save ``out_dir/latest``.

    Defaults follow the book's DPO notebook (beta 0.1, 1 epoch, AdamW lr 5e-6, weight decay
    0.01, batch 8, 85/5/10 split). The metrics log gets the loss and the reward margin /
    accuracy (how often the chosen answer earns the higher implicit reward). The loop options
    are those of ``finetune.loop.LoopSettings``. ``cache_reference`` (module docstring):
    reference log-probs computed once before training instead of a reference model per step.
    ``out_dir/test_responses.json`` gets the aligned policy's greedy answers to the test split
    (``generate_test``), in ``finetune instruct``'s format, so ``evaluate reward`` can compare
    the two models' answers prompt by prompt.
    """
    # None: the format --model was instruction-tuned with (else the book's Alpaca)
    prompt_style = check_style(prompt_style or tuned_prompt_style(model_dir) or "alpaca")
    if beta <= 0:
        raise ConfigError(f"beta must be positive, got {beta}; the book uses 0.1")
    if generate_test:
        check_answer_length(max_new_tokens)
    settings = LoopSettings.from_options(locals())
    entries = load_preference_data(data_file)
    train_entries, val_entries, test_entries = split_entries(entries, shuffle=shuffle_split,
                                                             seed=seed)
    setup, max_length = start_prompted_run(
        model_dir, out_dir, prompt_style=prompt_style, max_length=max_length, device=device,
        precision=precision, seed=seed, overwrite=overwrite, resume=resume)
    policy, tokenizer = setup.model, setup.tokenizer
    collate = with_reference(partial(preference_collate, pad_id=tokenizer.eot_id,
                                     max_length=max_length))
    train_set = PreferenceDataset(train_entries, tokenizer, prompt_style)
    check_responses_fit(train_set, collate, data_file, max_length)
    val_set = PreferenceDataset(val_entries, tokenizer, prompt_style)
    evals = {"train": eval_loader(train_set, batch_size, collate),
             "val": eval_loader(val_set, batch_size, collate)}
    reference = None
    if cache_reference:  # the source model, also when resuming (its checkpoint loads later)
        for dataset, count in ((train_set, None), (val_set, eval_batches * batch_size)):
            cache_reference_logprobs(policy, dataset, collate, count=count,
                                     batch_size=micro_batch_size or batch_size,
                                     average=average_logprobs, device=setup.device,
                                     autocast=autocast_for(setup.precision, setup.device))
    elif not lora:
        reference = frozen_copy(policy)
    maybe_apply_lora(policy, lora)
    if not cache_reference and lora:
        reference = reference_model(policy)  # the base under the adapters, no copy
    task = DPOTask(policy, reference, train_set, collate, evals, beta=beta,
                   average=average_logprobs, device=setup.device, eval_batches=eval_batches,
                   save=model_saver(setup), plot=partial(plot_run, setup))
    recipe = {"method": "dpo", "model": source_name(model_dir),
              "data_file": source_name(data_file), "beta": beta,
              "prompt_style": prompt_style, "max_length": max_length,
              "average_logprobs": average_logprobs, "lora": lora,
              "shuffle_split": shuffle_split, "eval_batches": eval_batches,
              "cache_reference": cache_reference}
    result = FinetuneLoop(setup, task, settings, recipe).run()
    last, nan = result.last_eval, float("nan")
    saved = setup.out_dir / "latest"
    if not result.interrupted:
        metadata = {**recipe, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                    "weight_decay": weight_decay, "seed": seed, "steps": result.step, **last}
        saved = finish_run(setup, result, lora=lora, metadata=metadata)
    responses_path = None
    if generate_test and test_entries and not result.interrupted:
        answers = generate_responses(policy, tokenizer, test_entries, style=prompt_style,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     progress=progress, eos_ids=setup.eos_ids)
        responses_path = atomic_write_json(setup.out_dir / RESPONSES_FILE, answers)
    return DPOResult(setup.out_dir, saved, last.get("train_loss", nan), last.get("val_loss", nan),
                     last.get("val_reward_margin", nan), last.get("val_reward_accuracy", nan),
                     result.step, result.interrupted, result.stop_signal, responses_path)
