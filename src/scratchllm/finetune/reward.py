"""Train a reward model on preference pairs (book ch. 8: the RM of RLHF) in one call.

``finetune_reward`` reads the book's preference JSON (``instruction``, ``input``, ``chosen``,
``rejected``), splits it 85/5/10 as ch. 7 and DPO do (``split_entries``), puts a one-output
head on the model (``reward_model``), trains the pairwise loss (``reward_task``) in the loop
every fine-tuning method shares (checkpoints, ``--resume``, metrics.jsonl, plots, ``best/`` by
validation pairwise accuracy), and reports pairwise accuracy and mean margin per split.

Normalisation: after training, the model scores the *reference answers* -- the ``chosen`` and
``rejected`` responses of the training split, or, with ``reference_responses``, the answers
in that file (``finetune instruct`` / ``dpo`` test_responses.json: the policy PPO starts
from) -- and their mean and (population) std are stored in the saved model, so scores come
out with mean 0 and std 1 on exactly those answers.

``OUT/`` receives ``model/`` (the reward model: ``open_reward_model(OUT)``), ``best/`` (best
validation accuracy; raw, unnormalised scores), ``metrics.jsonl``, ``loss.png``,
``accuracy.png``, ``results.json`` (plus ``adapter.safetensors`` for LoRA
runs and ``checkpoints/`` + ``latest/`` when checkpoints were saved).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from scratchllm.data.chat_templates import prompt_style_of
from scratchllm.data.instruction import check_style, encode_example, load_json_entries, split_entries
from scratchllm.data.preference import load_preference_data
from scratchllm.errors import ConfigError, DataError
from scratchllm.finetune.classifier_model import set_trainable
from scratchllm.finetune.classify import ADAPTER_FILE, RESULTS_FILE
from scratchllm.finetune.loop import FinetuneLoop, LoopSettings
from scratchllm.finetune.reward_ensemble import check_ensemble, finetune_reward_ensemble
from scratchllm.finetune.reward_model import (
    RewardScorer, attach_reward_head, reward_metadata, save_reward_model,
)
from scratchllm.finetune.reward_pooling import check_pooling, finish_with_start
from scratchllm.finetune.reward_task import (
    RewardPairs, RewardTask, check_loss_settings, evaluate_pairs, plot_reward_run,
)
from scratchllm.finetune.runs import RunSetup, check_out, claim_out, master_weights, source_name
from scratchllm.model.lora import lora_layers, merge_lora, save_lora, trainable_parameters
from scratchllm.train.metrics import METRICS_FILE, MetricsLog
from scratchllm.train.run_dir import link_model_dir
from scratchllm.train.steps import autocast_for, resolve_precision
from scratchllm.utils.atomic import atomic_write_json
from scratchllm.utils.device import resolve_device
from scratchllm.weights.auto import generation_header, open_model

MODEL_SUBDIR = "model"
TRAIN_MODES = {"full": "all", "last-block": "last-block", "lora": "lora", "head": "head"}


@dataclass
class RewardResult:
    """What a reward-model run produced: per-split accuracy/margin and where the files are."""

    out_dir: Path
    model_dir: Path
    metrics: dict[str, dict]          # split -> {accuracy, margin, loss, pairs, ...}
    normalization: dict[str, Any]
    trainable_params: int
    total_params: int
    steps: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    stop_signal: int | None = None

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["out_dir"], values["model_dir"] = str(self.out_dir), str(self.model_dir)
        metrics = values.pop("metrics")
        return {**metrics, **values}  # results.json: "train"/"val"/"test" at the top


def reference_sequences(scorer: RewardScorer, train: RewardPairs, path: str | os.PathLike | None,
                        key: str) -> tuple[list[list[int]], list[int], str]:
    """The answers normalisation is measured on, where their responses start, and how
    results.json names them."""
    if path is None:
        return (train.chosen + train.rejected, train.chosen_starts + train.rejected_starts,
                "train split: chosen and rejected responses")
    records = load_json_entries(path, ("instruction", key))
    built = []
    for record in records:
        item = encode_example(record, scorer.tokenizer, scorer.prompt_style, response_key=key)
        built.append(finish_with_start(item["ids"], item["prompt_len"], scorer.end_id,
                                       scorer.limit, scorer.info.get("end_ids") or ()))
    return [b[0] for b in built], [b[1] for b in built], f"{source_name(path)} ({key})"


def normalization_stats(scorer: RewardScorer, sequences: list[list[int]], starts: list[int],
                        source: str, *, batch_size: int) -> dict[str, Any]:
    """Mean and population std of the raw scores (so the normalised ones have std exactly 1)."""
    if len(sequences) < 2:
        raise DataError(f"normalisation needs at least 2 reference answers, {source} has "
                        f"{len(sequences)}; give more data or --reference-responses")
    raw = scorer.raw_scores(sequences, batch_size, starts).double()
    std = float(raw.std(unbiased=False))
    if not std > 1e-6:
        raise DataError(f"the reward model gives every reference answer ({source}) the same "
                        "score, so it cannot be normalised; train longer or on other data")
    return {"mean": float(raw.mean()), "std": std, "count": len(sequences), "reference": source}


def finetune_reward(model_dir: str | os.PathLike, data_file: str | os.PathLike,
                    out_dir: str | os.PathLike, *, epochs: int = 1, batch_size: int = 8,
                    lr: float = 1e-5, weight_decay: float = 0.01, train_mode: str = "full",
                    margin: float = 0.0, center_coef: float = 0.0, pooling: str = "last",
                    prompt_style: str | None = None,
                    max_length: int | None = None, shuffle_split: bool = False,
                    lora_rank: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                    reference_responses: str | os.PathLike | None = None,
                    reference_key: str = "model_response", keep_best: bool = False,
                    seed: int = 123, eval_every: int = 10, eval_batches: int = 5,
                    device: str = "auto", precision: str = "auto", progress: bool = True,
                    stream: TextIO | None = None, overwrite: bool = False, resume: bool = False,
                    micro_batch_size: int | None = None, warmup_steps: int = 0,
                    min_lr: float | None = None, grad_clip: float | None = None,
                    save_every: int = 0, keep_last: int = 3,
                    stop_at: int | None = None, ensemble: int = 1) -> RewardResult:
    """Train a reward model from ``model_dir`` on ``data_file``; write ``out_dir`` (module doc).

    ``train_mode``: full (every weight), last-block (last block, final norm and head), lora
    (LoRA adapters on every linear layer plus the head) or head. ``pooling``: where the score
    is read, ``last`` (the end token) or ``mean`` (over the response; ``reward_pooling``
    says when that helps). ``prompt_style`` defaults
    to the one the model was fine-tuned with (its metadata), else Alpaca. ``keep_best`` saves the
    weights of the evaluation with the best validation pairwise accuracy instead of the last.
    The loop options are those of ``finetune.loop.LoopSettings``. ``ensemble`` > 1 trains that
    many reward models (seeds ``seed``, ``seed + 1``, ...) and saves their average as one
    model directory (``finetune.reward_ensemble``).
    """
    if check_ensemble(ensemble) > 1:
        settings = {k: v for k, v in locals().items()
                    if k not in ("model_dir", "data_file", "out_dir", "ensemble", "seed",
                                 "overwrite", "resume")}
        return finetune_reward_ensemble(model_dir, data_file, out_dir, size=ensemble,
                                        seed=seed, overwrite=overwrite, resume=resume,
                                        **settings)
    if prompt_style is not None:
        check_style(prompt_style)
    check_loss_settings(margin, center_coef)
    check_pooling(pooling)
    if train_mode not in TRAIN_MODES:
        raise ConfigError(f"unknown train mode {train_mode!r}; choose one of "
                          f"{', '.join(TRAIN_MODES)}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                   or max_length < 2):
        raise ConfigError(f"max_length must be an integer >= 2 (tokens of prompt + response + "
                          f"end), got {max_length!r}")
    if isinstance(eval_batches, bool) or not isinstance(eval_batches, int) or eval_batches < 1:
        raise ConfigError(f"eval_batches must be a positive integer, got {eval_batches!r}")
    loop_settings = LoopSettings(epochs=epochs, batch_size=batch_size, lr=lr,
                                 weight_decay=weight_decay, seed=seed, eval_every=eval_every,
                                 micro_batch_size=micro_batch_size, warmup_steps=warmup_steps,
                                 min_lr=min_lr, grad_clip=grad_clip, save_every=save_every,
                                 keep_last=keep_last, progress=progress, stop_at=stop_at)
    loop_settings.check()
    start = time.perf_counter()
    entries = load_preference_data(data_file)
    if reference_responses is not None:  # fail before any training, not after it
        load_json_entries(reference_responses, ("instruction", reference_key))
    splits = split_entries(entries, shuffle=shuffle_split, seed=seed)
    if keep_best and not splits[1]:
        raise ConfigError(f"{data_file}: keep_best needs a validation split, and "
                          f"{len(entries)} pairs leave none; add data")
    out, checkpoint = check_out(model_dir, out_dir, overwrite=overwrite, resume=resume)
    device_ = resolve_device(device)
    precision = resolve_precision(precision, device_)
    loaded = open_model(model_dir, device=device_, require_tokenizer=True)
    model, tokenizer = master_weights(loaded.model), loaded.tokenizer
    prompt_style = prompt_style or prompt_style_of(loaded.metadata) or "alpaca"
    context = model.config.context_length
    limit = min(max_length or context, context)
    end_id = tokenizer.eot_id
    pairs = [RewardPairs(split, tokenizer, prompt_style, end_id=end_id, end_ids=loaded.eos_ids,
                         limit=limit) if split else None for split in splits]
    train_pairs, val_pairs, test_pairs = pairs
    if train_pairs is None or len(train_pairs) < batch_size:
        raise DataError(f"{data_file}: the training split has "
                        f"{len(train_pairs) if train_pairs else 0} pairs, fewer than one batch "
                        f"of {batch_size}; lower --batch-size or add data")

    torch.manual_seed(seed)  # the new head's initialization
    attach_reward_head(model)
    set_trainable(model, TRAIN_MODES[train_mode], lora_rank=lora_rank, lora_alpha=lora_alpha,
                  lora_dropout=lora_dropout)
    model.to(device_)
    n_trainable, n_total = trainable_parameters(model)
    out = claim_out(out, overwrite=overwrite, checkpoint=checkpoint)
    info = reward_metadata(prompt_style=prompt_style, end_id=end_id, end_ids=loaded.eos_ids,
                           emb_dim=model.out_head.in_features, max_length=limit,
                           train_mode=train_mode, margin=margin, center_coef=center_coef,
                           pooling=pooling)
    # checkpoints carry it too: a run stopped early leaves a latest/ that scores (evaluate
    # reward, ppo --reward-model), not a model with a stray head nothing loads
    setup = RunSetup(model, tokenizer, device_, precision, out, MetricsLog(out / METRICS_FILE),
                     loaded.eos_ids, checkpoint, source_name(model_dir), resume_requested=resume,
                     model_metadata=info)

    def save(directory: Path, model_: nn.Module, metadata: dict) -> Path:
        return save_reward_model(directory, model_, tokenizer, {**metadata, **info},
                                 generation_header(loaded.eos_ids))

    task = RewardTask(model, train_pairs, val_pairs, batch_size=batch_size,
                      eval_batches=eval_batches, margin=margin, center_coef=center_coef,
                      device=device_, save=save, out_dir=out, pooling=pooling)
    recipe = {"method": "reward", "model": source_name(model_dir),
              "data_file": source_name(data_file), "train_mode": train_mode,
              "prompt_style": prompt_style, "max_length": limit, "margin": margin,
              "center_coef": center_coef, "pooling": pooling, "shuffle_split": shuffle_split,
              "lora": [lora_rank, lora_alpha, lora_dropout] if train_mode == "lora" else None,
              "eval_batches": eval_batches}
    loop = FinetuneLoop(setup, task, loop_settings, recipe, stream=stream)
    sizes = "/".join(str(len(p) if p else 0) for p in pairs)
    run = loop.run(intro=f"training a reward model: {n_trainable:,} of {n_total:,} parameters "
                   f"({train_mode}) on {device_} ({precision}), {sizes} pairs, "
                   f"{loop.total_steps} steps")
    settings = {**recipe, **loop_settings.recipe(), "keep_best": keep_best,
                "reference_responses": reference_responses and source_name(reference_responses)}
    result = RewardResult(out, out / MODEL_SUBDIR, {}, {}, n_trainable, n_total, run.step,
                          time.perf_counter() - start, settings, run.interrupted, run.stop_signal)
    if run.interrupted:
        return result

    run.best.write(model)
    if keep_best and run.best.restore_into(model):
        result.settings["best_step"] = run.best.info.get("step")
        loop.say(f"kept step {run.best.info.get('step')}'s weights (best validation pairwise "
                 f"accuracy {run.best.score[0] * 100:.2f}%)")
    if lora_layers(model):
        save_lora(model, out / ADAPTER_FILE)
        merge_lora(model)
    model.eval()
    scorer = RewardScorer(model, tokenizer, info[next(iter(info))])
    sequences, starts, source = reference_sequences(scorer, train_pairs, reference_responses,
                                                    reference_key)
    result.normalization = normalization_stats(scorer, sequences, starts, source,
                                               batch_size=batch_size)
    autocast = autocast_for(precision, device_)
    for name, split in zip(("train", "val", "test"), pairs):
        values = ({"loss": None, "accuracy": None, "margin": None, "pairs": 0} if split is None
                  else evaluate_pairs(model, split, batch_size=batch_size, device=device_,
                                      margin=margin, center_coef=center_coef, autocast=autocast,
                                      pooling=pooling))
        if values["margin"] is not None:
            values["normalized_margin"] = values["margin"] / result.normalization["std"]
        result.metrics[name] = values
        if split is not None:
            loop.say(f"{name}: pairwise accuracy {values['accuracy'] * 100:.2f}%, mean margin "
                     f"{values['margin']:.4f} over {values['pairs']} pairs")
    info["reward_model"]["normalization"] = result.normalization
    result.model_dir = save(out / MODEL_SUBDIR, model, {
        "steps": run.step, "test_accuracy": result.metrics["test"]["accuracy"]})
    if (out / "latest").is_dir():  # checkpoints pointed it at a training state
        link_model_dir(result.model_dir, out / "latest")
    plot_reward_run(out)
    result.seconds = time.perf_counter() - start
    atomic_write_json(out / RESULTS_FILE, result.to_dict())
    return result
