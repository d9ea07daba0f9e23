"""Compare models' answers by reward-model score (book ch. 8's "evaluated by RM score").

Each responses file is a JSON list of records with ``instruction`` (and ``input``) and the
answer under ``response_key``: the ``test_responses.json`` that ``finetune instruct`` writes
(``model_response``). Every answer gets the reward model's normalised score
(``finetune.reward_model``); per file the mean and median are reported, and for every two
files the win rate over the prompts they share: how often the first file's answer scores
higher (ties, within ``TIE``, count half). Prompts are matched by (instruction, input), the
n-th repeat of a prompt in one file with the n-th in the other.
"""

from __future__ import annotations

import itertools
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from scratchllm.data.instruction import load_json_entries
from scratchllm.errors import ConfigError
from scratchllm.finetune.reward_model import RewardScorer, open_reward_model
from scratchllm.utils.device import resolve_device


def prompt_keys(records: Sequence[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(instruction, input, occurrence) of each record: the key answers are matched by."""
    seen: Counter = Counter()
    keys = []
    for record in records:
        prompt = (record["instruction"], record.get("input") or "")
        keys.append((*prompt, seen[prompt]))
        seen[prompt] += 1
    return keys


def score_file(scorer: RewardScorer, path: str | os.PathLike, response_key: str, *,
               batch_size: int) -> tuple[list[dict[str, Any]], list[float]]:
    records = load_json_entries(path, ("instruction", response_key))
    prompts = [{"instruction": r["instruction"], "input": r.get("input") or ""} for r in records]
    scores = scorer.score(prompts, [r[response_key] for r in records], batch_size)
    return records, scores.tolist()


TIE = 1e-5  # normalised scores this close are a tie: the same answer in batches of other widths


def win_rate(a: dict[tuple, float], b: dict[tuple, float]) -> dict[str, Any]:
    """How often ``a``'s answer beats ``b``'s on the prompts both answered."""
    shared = [k for k in a if k in b]
    wins = sum(a[k] > b[k] + TIE for k in shared)
    ties = sum(abs(a[k] - b[k]) <= TIE for k in shared)
    return {"prompts": len(shared), "a_wins": wins, "ties": ties,
            "b_wins": len(shared) - wins - ties,
            "a_win_rate": (wins + ties / 2) / len(shared) if shared else None}


def evaluate_reward(reward_model: str | os.PathLike, response_files: Sequence[str | os.PathLike],
                    *, response_key: str = "model_response", batch_size: int = 8,
                    device: str = "auto") -> dict[str, Any]:
    """Per-file score statistics and pairwise win rates (module docstring)."""
    if not response_files:
        raise ConfigError("give at least one responses file (--responses FILE [FILE ...])")
    scorer = open_reward_model(reward_model, device=resolve_device(device))
    files, by_prompt = [], []
    for path in response_files:
        records, scores = score_file(scorer, path, response_key, batch_size=batch_size)
        files.append({"file": str(path), "count": len(scores), "mean": statistics.fmean(scores),
                      "median": statistics.median(scores),
                      "std": statistics.pstdev(scores), "min": min(scores), "max": max(scores)})
        by_prompt.append(dict(zip(prompt_keys(records), scores)))
    pairs = [{"a": files[i]["file"], "b": files[j]["file"], **win_rate(by_prompt[i], by_prompt[j])}
             for i, j in itertools.combinations(range(len(files)), 2)]
    return {"reward_model": str(scorer.source), "response_key": response_key,
            "normalization": scorer.info.get("normalization"), "files": files,
            "win_rates": pairs}


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def format_reward_report(report: dict[str, Any]) -> str:
    """The report as a small table and one line per pair of files."""
    width = max(len(f["file"]) for f in report["files"])
    lines = [f"{'file':<{width}}  {'answers':>7}  {'mean':>8}  {'median':>8}"]
    lines += [f"{f['file']:<{width}}  {f['count']:>7}  {f['mean']:>8.4f}  {f['median']:>8.4f}"
              for f in report["files"]]
    for pair in report["win_rates"]:
        rate = pair["a_win_rate"]
        lines.append(f"{pair['a']} beats {pair['b']}: " + (
            f"{rate * 100:.1f}% of {pair['prompts']} shared prompts ("
            f"{_count(pair['a_wins'], 'win')}, {_count(pair['ties'], 'tie')}, "
            f"{_count(pair['b_wins'], 'loss', 'losses')})" if rate is not None
            else "no prompts in common"))
    return "\n".join(lines)
