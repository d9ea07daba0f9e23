"""Direct Preference Optimization (Rafailov et al. 2023; the book's ch. 7 DPO bonus).

DPO skips the reward model of RLHF: it raises the policy's log-probability of the chosen
response relative to a frozen copy of the starting model (the *reference*), and lowers that
of the rejected one. With r = beta * (log pi(y|x) - log pi_ref(y|x)) as the implicit reward,
the loss is -log sigmoid(r_chosen - r_rejected): zero gradient pressure once chosen answers
are clearly preferred, ln 2 while policy and reference still agree.

Sequence log-probabilities are *averaged* over the response tokens by default, as the book's
``compute_logprobs`` does (long and short answers weigh the same); ``average=False`` sums
them, as the DPO paper defines it.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.data.instruction import IGNORE_INDEX, check_style, split_entries
from scratchllm.data.preference import PreferenceDataset, load_preference_data, preference_collate
from scratchllm.errors import ConfigError
from scratchllm.finetune.runs import (
    eval_loader,
    finish_run,
    maybe_apply_lora,
    start_run,
    train_epochs,
    train_loader,
)


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, *,
                      average: bool = True) -> torch.Tensor:
    """(B,) log-probability of each row's target tokens, skipping ``IGNORE_INDEX`` targets."""
    mask = targets != IGNORE_INDEX
    logps = torch.log_softmax(logits.float(), dim=-1)
    picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    total = (picked * mask).sum(dim=-1)
    return total / mask.sum(dim=-1).clamp(min=1) if average else total


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen rewards, rejected rewards); rewards are detached, per example."""
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, (beta * chosen).detach(), (beta * rejected).detach()


def pair_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], *,
                  average: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-probs from one forward pass over the stacked (2B, T) batch."""
    inputs = torch.cat([batch["chosen_inputs"], batch["rejected_inputs"]])
    targets = torch.cat([batch["chosen_targets"], batch["rejected_targets"]])
    logps = sequence_logprobs(model(inputs), targets, average=average)
    n = batch["chosen_inputs"].shape[0]
    return logps[:n], logps[n:]


def frozen_copy(model: nn.Module) -> nn.Module:
    """The reference model: the policy as it is now, in eval mode, never updated."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def dpo_batch(policy: nn.Module, reference: nn.Module, batch: dict[str, torch.Tensor], *,
              beta: float, average: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO loss of one batch and its reward statistics (margin and accuracy)."""
    policy_chosen, policy_rejected = pair_logprobs(policy, batch, average=average)
    with torch.no_grad():
        ref_chosen, ref_rejected = pair_logprobs(reference, batch, average=average)
    loss, chosen_r, rejected_r = dpo_loss(policy_chosen, policy_rejected, ref_chosen,
                                          ref_rejected, beta)
    stats = {"reward_margin": float((chosen_r - rejected_r).mean()),
             "reward_accuracy": float((chosen_r > rejected_r).float().mean())}
    return loss, stats


@dataclass
class DPOResult:
    out_dir: Path
    model_dir: Path
    train_loss: float
    val_loss: float
    val_reward_margin: float
    val_reward_accuracy: float


def finetune_dpo(model_dir: str | Path, data_file: str | Path, out_dir: str | Path, *,
                 beta: float = 0.1, epochs: int = 1, batch_size: int = 8, lr: float = 5e-6,
                 weight_decay: float = 0.01, prompt_style: str = "alpaca",
                 max_length: int | None = None, average_logprobs: bool = True,
                 lora: dict | None = None, seed: int = 123, device: str | None = "auto",
                 precision: str = "auto", eval_every: int = 5, eval_batches: int = 5,
                 shuffle_split: bool = False, progress: bool = True,
                 overwrite: bool = False) -> DPOResult:
    """Preference-tune an (instruction-tuned) model directory with DPO; save ``out_dir/latest``.

    Defaults follow the book's DPO notebook (beta 0.1, 1 epoch, AdamW lr 5e-6, weight decay
    0.01, batch 8, 85/5/10 split). The metrics log gets the loss and the reward margin /
    accuracy (how often the chosen answer earns the higher implicit reward).
    """
    check_style(prompt_style)
    if beta <= 0:
        raise ConfigError(f"beta must be positive, got {beta}; the book uses 0.1")
    entries = load_preference_data(data_file)
    train_entries, val_entries, _ = split_entries(entries, shuffle=shuffle_split, seed=seed)
    setup = start_run(model_dir, out_dir, device=device, precision=precision, seed=seed,
                      overwrite=overwrite)
    policy, tokenizer = setup.model, setup.tokenizer
    context = policy.config.context_length
    collate = partial(preference_collate, pad_id=tokenizer.eot_id,
                      max_length=min(max_length or context, context))
    train_set = PreferenceDataset(train_entries, tokenizer, prompt_style)
    val_set = PreferenceDataset(val_entries, tokenizer, prompt_style)
    loader = train_loader(train_set, batch_size, collate, seed)
    evals = {"train": eval_loader(train_set, batch_size, collate),
             "val": eval_loader(val_set, batch_size, collate)}
    reference = frozen_copy(policy)
    maybe_apply_lora(policy, lora)
    policy.train()

    def on_device(batch):
        return {k: v.to(setup.device) for k, v in batch.items()}

    def step_fn(batch):
        batch = on_device(batch)
        loss, stats = dpo_batch(policy, reference, batch, beta=beta, average=average_logprobs)
        tokens = int(batch["chosen_mask"].sum() + batch["rejected_mask"].sum())
        return loss, stats, tokens

    @torch.no_grad()
    def eval_fn() -> dict[str, float]:
        out = {}
        for name, data in evals.items():
            rows = [dpo_batch(policy, reference, on_device(b), beta=beta, average=average_logprobs)
                    for b in itertools.islice(iter(data), eval_batches)]
            if not rows:
                continue
            out[f"{name}_loss"] = sum(float(loss) for loss, _ in rows) / len(rows)
            for key in ("reward_margin", "reward_accuracy"):
                out[f"{name}_{key}"] = sum(s[key] for _, s in rows) / len(rows)
        return out

    last = train_epochs(setup, loader, epochs=epochs, lr=lr, weight_decay=weight_decay,
                        step_fn=step_fn, eval_fn=eval_fn, eval_every=eval_every,
                        progress=progress)
    settings = {"method": "dpo", "beta": beta, "prompt_style": prompt_style, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
                "average_logprobs": average_logprobs, "lora": lora, **last}
    saved = finish_run(setup, lora=lora, metadata=settings)
    nan = float("nan")
    return DPOResult(setup.out_dir, saved, last.get("train_loss", nan), last.get("val_loss", nan),
                     last.get("val_reward_margin", nan), last.get("val_reward_accuracy", nan))
