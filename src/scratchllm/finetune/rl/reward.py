"""Where RL's scores come from: a trained reward model, or a Python function of the user's.

Either is a ``RewardSource``: ``score(prompts, responses) -> (B,) float tensor``.

* ``--reward-model DIR``: ``finetune.reward_model.open_reward_model`` (a backbone with a scalar
  head, scores normalised to mean 0 / std 1 on the reference policy's answers).
* ``--reward-fn FILE.py:NAME``: the file the user names is imported (it is their own code)
  and ``NAME(prompt: str, response: str) -> float`` is called once per answer, for rule-based
  rewards (a format check, a word list, a unit test).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch

from scratchllm.errors import ConfigError, MissingFileError
from scratchllm.finetune.rl.prompts import Prompt


class RewardSource(Protocol):
    """Scores answers; ``prompts[i]`` is the prompt's text (instruction, then input)."""

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor: ...


class ModelReward:
    """A reward model (``finetune.reward_model.RewardScorer``): it is given each prompt's
    instruction entry and formats it in the prompt style it was trained with."""

    takes_entries = True

    def __init__(self, scorer) -> None:
        self.scorer = scorer

    def score(self, prompts: list[dict], responses: list[str]) -> torch.Tensor:
        return self.scorer.score(prompts, responses)


class FunctionReward:
    """A ``fn(prompt, response) -> float`` as a RewardSource; a non-number is a clear error."""

    def __init__(self, fn: Callable[[str, str], float], name: str = "reward function") -> None:
        self.fn, self.name = fn, name

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        values = []
        for prompt, response in zip(prompts, responses, strict=True):
            try:
                value = self.fn(prompt, response)
            except Exception as err:  # the user's code: one line that says where, not a trace
                raise ConfigError(f"{self.name} raised {type(err).__name__}: {err} (prompt "
                                  f"{prompt!r:.40}, response {response!r:.40}); fix the "
                                  "function") from err
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ConfigError(f"{self.name} returned {value!r:.60} for a response; it must "
                                  "return a finite number (float)")
            values.append(float(value))
        return torch.tensor(values, dtype=torch.float32)


def load_reward_fn(spec: str) -> FunctionReward:
    """``path/to/file.py:name`` -> the function, imported from the user's file."""
    path_text, sep, name = str(spec).rpartition(":")
    if not sep or not path_text or not name.isidentifier():
        raise ConfigError(f"--reward-fn {spec!r} is not FILE.py:NAME; write e.g. "
                          "--reward-fn rewards.py:score")
    path = Path(path_text).expanduser()
    if path.suffix != ".py":
        raise ConfigError(f"--reward-fn {spec!r}: {path} is not a .py file; write FILE.py:NAME")
    if not path.is_file():
        raise MissingFileError(f"--reward-fn: {path} not found; pass the Python file that "
                               f"defines {name}(prompt, response) -> float")
    module_name = f"_scratchllm_reward_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # before running it, as an import would (dataclasses)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:  # the user's module failed to import: say where, in one line
        sys.modules.pop(module_name, None)
        raise ConfigError(f"--reward-fn: importing {path} failed ({type(err).__name__}: "
                          f"{err}); fix that file") from err
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(f"--reward-fn: {path} defines no function {name!r} (callables there: "
                          f"{', '.join(found[:8]) or 'none'})")
    return FunctionReward(fn, f"{path.name}:{name}")


def open_reward_source(*, reward_model: str | os.PathLike | None = None,
                       reward_fn: str | None = None, device: torch.device | None = None
                       ) -> RewardSource:
    """Exactly one of ``reward_model`` (a directory) and ``reward_fn`` (FILE.py:NAME)."""
    if (reward_model is None) == (reward_fn is None):
        raise ConfigError("give exactly one reward: --reward-model DIR or --reward-fn FILE.py:NAME")
    if reward_fn is not None:
        return load_reward_fn(reward_fn)
    from scratchllm.finetune.reward_model import open_reward_model  # noqa: PLC0415

    return ModelReward(open_reward_model(reward_model, device=device or "cpu"))


def score_with_penalty(source: RewardSource, prompts: Sequence[Prompt], responses: Sequence[str],
                       ended: torch.Tensor, missing_eos_penalty: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw scores, scores minus ``missing_eos_penalty`` for answers that never ended), (B,)."""
    given = [p.entry if getattr(source, "takes_entries", False) else p.text for p in prompts]
    raw = source.score(given, list(responses))
    raw = torch.as_tensor(raw).detach().float().cpu()
    if raw.shape != (len(responses),):
        raise ConfigError(f"the reward returned shape {tuple(raw.shape)} for {len(responses)} "
                          "responses; it must give one score per response")
    return raw, raw - missing_eos_penalty * (~ended.cpu()).float()
