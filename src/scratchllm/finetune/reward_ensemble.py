"""An ensemble reward model: K reward models trained from different seeds, scores averaged.

Why: a small reward model trained on a few hundred pairs lands somewhere different with every
seed (the batch order alone moves held-out accuracy by a few points); the average of K such
models varies less and is harder for PPO to over-optimise, since an answer must fool all K.
K heads on one backbone would not do: with mean or end-token pooling the average of K linear
heads is one linear head, so only separately trained backbones reduce the variance.

The saved ensemble is one directory (``OUT/model``) that ``open_reward_model`` opens like any
reward model::

    model/config.json          the members' header; metadata.reward_model.ensemble lists them
    model/member-1/ ...        each a complete reward model directory (config + weights)

Its score is the mean of the members' normalised scores, normalised again on the same
reference answers, so it too has mean 0 and std 1 there. The members' training runs
(metrics, plots, results.json, checkpoints) stay in ``OUT/members/member-i``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scratchllm.errors import CheckpointError, ConfigError
from scratchllm.finetune.reward_model import REWARD_KEY, RewardScorer
from scratchllm.utils.atomic import atomic_write_json

ENSEMBLE_KEY = "ensemble"
MEMBERS_DIR = "members"


def check_ensemble(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"ensemble must be a whole number of reward models >= 1, got {size!r}")
    return size


class EnsembleScorer(RewardScorer):
    """A ``RewardScorer`` whose raw score is the mean of its members' normalised scores."""

    def __init__(self, members: Sequence[RewardScorer], info: dict[str, Any],
                 source: Path | None = None) -> None:
        first = members[0]
        for member in members[1:]:
            same = (member.end_id == first.end_id and member.prompt_style == first.prompt_style
                    and member.limit == first.limit
                    and member.tokenizer.to_dict() == first.tokenizer.to_dict())
            if not same:
                raise CheckpointError(f"the members of the reward-model ensemble {source} differ "
                                      "in tokenizer, prompt style, end id or context; train "
                                      "them together with `finetune reward --ensemble K`")
        super().__init__(first.model, first.tokenizer, info, source)
        self.members = list(members)

    @property
    def limit(self) -> int:
        return min(m.limit for m in self.members)

    @torch.no_grad()
    def raw_scores(self, sequences: Sequence[Sequence[int]], batch_size: int = 8,
                   starts: Sequence[int] | None = None) -> torch.Tensor:
        """(N,) mean of the members' normalised scores (the ensemble's own, unnormalised)."""
        total = torch.zeros(len(sequences))
        for member in self.members:
            total += member.normalize(member.raw_scores(sequences, batch_size, starts))
        return total / len(self.members)


def ensemble_info(member_info: dict[str, Any], names: Sequence[str],
                  normalization: dict[str, Any] | None) -> dict[str, Any]:
    """The ensemble's reward metadata: the members' (shared) settings, their folder names."""
    info = {k: v for k, v in member_info.items()
            if k not in ("normalization", "steps", "test_accuracy")}
    return {**info, "normalization": normalization, ENSEMBLE_KEY: {"members": list(names)}}


def save_ensemble(directory: Path, member_dirs: Sequence[Path], info: dict[str, Any]) -> Path:
    """Move the members' model directories into ``directory`` and write its config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i, member in enumerate(member_dirs, start=1):
        name = f"member-{i}"
        target = directory / name
        if member.resolve() != target.resolve():
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(member), str(target))
        names.append(name)
    header = json.loads((directory / names[0] / "config.json").read_text(encoding="utf-8"))
    header.setdefault("metadata", {})[REWARD_KEY] = {**info, ENSEMBLE_KEY: {"members": names}}
    atomic_write_json(directory / "config.json", header)
    return directory


def open_ensemble(directory: Path, info: dict[str, Any], open_member,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype | str | None = None) -> EnsembleScorer:
    """The ensemble saved in ``directory``; ``open_member(path, device, dtype)`` opens one."""
    names = (info.get(ENSEMBLE_KEY) or {}).get("members")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{directory}/config.json: the reward-model ensemble lists no "
                              "members; retrain it with `finetune reward --ensemble K`")
    members = []
    for name in names:
        path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_dir():
            raise CheckpointError(f"{directory}: ensemble member {name!r} is missing (expected "
                                  f"the folder {path}); the ensemble must be moved as one folder")
        member = open_member(path, device=device, dtype=dtype)
        if isinstance(member, EnsembleScorer):
            raise CheckpointError(f"{path} is itself an ensemble; members must be single models")
        members.append(member)
    return EnsembleScorer(members, info, directory)


def member_seeds(seed: int, size: int) -> list[int]:
    """Member i (from 1) trains with ``seed + i - 1``: member 1 is the plain run's twin."""
    return [seed + i for i in range(size)]


class ScoreMemo:
    """``raw_scores`` of a scorer, each distinct (sequence, start) scored once: the training
    split's answers are both the normalisation's reference and the train metrics' pairs."""

    def __init__(self, scorer: RewardScorer) -> None:
        self.scorer, self.seen = scorer, {}

    def raw_scores(self, sequences: Sequence[Sequence[int]], batch_size: int = 8,
                   starts: Sequence[int] | None = None) -> torch.Tensor:
        keys = [(tuple(seq), None if starts is None else int(starts[i]))
                for i, seq in enumerate(sequences)]
        new = list(dict.fromkeys(k for k in keys if k not in self.seen))
        if new:
            scores = self.scorer.raw_scores([list(k[0]) for k in new], batch_size,
                                            None if starts is None else [k[1] for k in new])
            self.seen.update(zip(new, scores.tolist()))
        return torch.tensor([self.seen[k] for k in keys])


def pair_metrics(scorer: RewardScorer | ScoreMemo, pairs, *, batch_size: int, margin: float,
                 center_coef: float) -> dict[str, Any]:
    """Loss, pairwise accuracy and mean margin of a scorer's raw scores on ``RewardPairs``."""
    from scratchllm.finetune.reward_task import reward_losses  # noqa: PLC0415

    if pairs is None:
        return {"loss": None, "accuracy": None, "margin": None, "pairs": 0}
    chosen = scorer.raw_scores(pairs.chosen, batch_size, pairs.chosen_starts)
    rejected = scorer.raw_scores(pairs.rejected, batch_size, pairs.rejected_starts)
    losses = reward_losses(chosen, rejected, margin=margin, center_coef=center_coef)
    return {"loss": float(losses.mean()), "accuracy": float((chosen > rejected).float().mean()),
            "margin": float((chosen - rejected).mean()), "pairs": len(pairs)}


def finetune_reward_ensemble(model_dir, data_file, out_dir, *, size: int, seed: int,
                             overwrite: bool, resume: bool, **settings: Any):
    """``finetune_reward(..., ensemble=size)``: train the members, then assemble ``OUT/model``.

    Member i trains in ``OUT/members/member-i`` with seed ``seed + i - 1`` and every other
    setting as given. ``resume`` keeps finished members and resumes the others.
    """
    from scratchllm.data.instruction import split_entries  # noqa: PLC0415
    from scratchllm.data.preference import load_preference_data  # noqa: PLC0415
    from scratchllm.finetune.classify import RESULTS_FILE  # noqa: PLC0415
    from scratchllm.finetune.reward import (  # noqa: PLC0415
        MODEL_SUBDIR, RewardResult, finetune_reward, normalization_stats, reference_sequences,
    )
    from scratchllm.finetune.reward_model import open_reward_model  # noqa: PLC0415
    from scratchllm.finetune.reward_task import RewardPairs  # noqa: PLC0415
    from scratchllm.finetune.runs import check_out  # noqa: PLC0415
    from scratchllm.train.run_dir import link_model_dir  # noqa: PLC0415
    from scratchllm.utils.outputs import FINETUNE_RUN, prepare_output_dir  # noqa: PLC0415

    if settings.get("shuffle_split"):
        raise ConfigError("--shuffle-split with --ensemble: members train with different seeds, "
                          "so each would hold out different pairs; shuffle the file once "
                          "yourself instead")
    start = time.perf_counter()
    out = Path(out_dir).expanduser()
    again = resume and (out / MEMBERS_DIR).is_dir()
    if not again:
        check_out(model_dir, out, overwrite=overwrite)
    out = prepare_output_dir(out, FINETUNE_RUN, overwrite=overwrite and not again,
                             resume=again)[0]
    target = out / MODEL_SUBDIR
    runs, member_dirs = [], []
    for i, member_seed in enumerate(member_seeds(seed, size), start=1):
        run_dir, moved = out / MEMBERS_DIR / f"member-{i}", target / f"member-{i}"
        if again and (run_dir / RESULTS_FILE).is_file():  # finished before the interruption
            saved = json.loads((run_dir / RESULTS_FILE).read_text(encoding="utf-8"))
            runs.append(saved)
            member_dirs.append(moved if moved.is_dir() else run_dir / MODEL_SUBDIR)
            continue
        run = finetune_reward(model_dir, data_file, run_dir, seed=member_seed,
                              resume=again and run_dir.is_dir(), overwrite=False, **settings)
        if run.interrupted:
            run.out_dir = out
            return run
        runs.append(run.to_dict())
        member_dirs.append(run.model_dir)
    device = settings.get("device", "auto")
    scorers = [open_reward_model(d, device=device) for d in member_dirs]
    info = ensemble_info(scorers[0].info, [f"member-{i}" for i in range(1, size + 1)], None)
    ensemble = EnsembleScorer(scorers, info, target)
    splits = split_entries(load_preference_data(data_file))
    limit = min(info.get("max_length") or ensemble.limit, ensemble.limit)  # as the members
    pairs = [RewardPairs(split, ensemble.tokenizer, ensemble.prompt_style, end_id=ensemble.end_id,
                         end_ids=info.get("end_ids") or (), limit=limit)
             if split else None for split in splits]
    batch = settings.get("batch_size", 8)
    sequences, starts, source = reference_sequences(
        ensemble, pairs[0], settings.get("reference_responses"),
        settings.get("reference_key", "model_response"))
    memo = ScoreMemo(ensemble)
    info["normalization"] = normalization_stats(memo, sequences, starts, source,
                                                batch_size=batch)
    metrics = {}
    for name, split in zip(("train", "val", "test"), pairs):
        values = pair_metrics(memo, split, batch_size=batch,
                              margin=settings.get("margin", 0.0),
                              center_coef=settings.get("center_coef", 0.0))
        if values["margin"] is not None:
            values["normalized_margin"] = values["margin"] / info["normalization"]["std"]
        metrics[name] = values
    save_ensemble(target, member_dirs, info)
    for i, saved in enumerate(runs, start=1):  # the members' own records follow their models
        run_dir = out / MEMBERS_DIR / f"member-{i}"
        saved["model_dir"] = str(target / f"member-{i}")
        atomic_write_json(run_dir / RESULTS_FILE, saved)
        if (run_dir / "latest").is_dir():
            link_model_dir(target / f"member-{i}", run_dir / "latest")
    first = runs[0]
    result = RewardResult(
        out, target, metrics, info["normalization"],
        sum(r["trainable_params"] for r in runs), sum(r["total_params"] for r in runs),
        sum(r["steps"] for r in runs), time.perf_counter() - start,
        {**first["settings"], "seed": seed, "ensemble": size,
         "member_seeds": member_seeds(seed, size),
         "members": [{"seed": s, "out_dir": str(out / MEMBERS_DIR / f"member-{i}"),
                      **{f"{k}_accuracy": r[k]["accuracy"] for k in ("train", "val", "test")}}
                     for i, (s, r) in enumerate(zip(member_seeds(seed, size), runs), start=1)]})
    atomic_write_json(out / RESULTS_FILE, result.to_dict())
    return result
