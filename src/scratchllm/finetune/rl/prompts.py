"""The prompts RL samples answers to: the book's instruction JSON or one prompt per line.

* A ``.json`` file is the book's instruction data (``instruction``, ``input``; ``output`` and
  the preference fields are ignored).
* Any other file holds one prompt per line (blank lines skipped); a line is the instruction
  (with an empty ``input``).

Either is split 85/5/10 as in ch. 7 (``split_entries``): rollouts use the training prompts,
and the held-out test prompts are answered at the end into ``test_responses.json`` (the file
``finetune instruct`` writes: each entry plus ``model_response``) for ``evaluate reward``.

With ``style`` ``alpaca`` or ``phi3`` the model sees the prompt as ``finetune instruct``
formatted it (the response header last, so the new tokens are the answer); ``raw`` gives the
text itself, for a model that was never instruction-tuned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.data.instruction import format_input, format_prompt, split_entries
from scratchllm.data.instruction import load_json_entries
from scratchllm.errors import ConfigError, DataError, MissingFileError

PROMPT_STYLES = ("alpaca", "phi3", "raw")


@dataclass
class Prompt:
    """One prompt: what the reward sees (``text``), what the model reads (``model_text``)."""

    text: str                         # the instruction (and input), as the user wrote it
    model_text: str                   # formatted for the policy (style's template)
    entry: dict[str, Any] = field(default_factory=dict)  # the JSON entry, or {"instruction": text}


def check_prompt_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ConfigError(f"unknown prompt style {style!r}; use one of {', '.join(PROMPT_STYLES)}")
    return style


def make_prompt(entry: dict[str, Any], style: str) -> Prompt:
    """The prompt of one instruction entry (``input`` optional) in ``style``."""
    entry = {"instruction": entry["instruction"], "input": entry.get("input") or "",
             **{k: v for k, v in entry.items() if k not in ("instruction", "input")}}
    text = entry["instruction"] + (f"\n\n{entry['input']}" if entry["input"] else "")
    model_text = text if style == "raw" else format_prompt(entry, style)
    return Prompt(text, model_text, entry)


def prompt_context(prompt: Prompt, style: str) -> str:
    """The instruction and input as the book formats them, without the response header."""
    return prompt.text if style == "raw" else format_input(prompt.entry, style)


def load_prompts(path: str | os.PathLike, style: str = "alpaca", *, shuffle_split: bool = False,
                 seed: int = 123) -> tuple[list[Prompt], list[Prompt]]:
    """(training prompts, test prompts) from ``path`` (see the module docstring)."""
    check_prompt_style(style)
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise MissingFileError(f"prompts file {path} {what}; pass the book's instruction "
                               "JSON or a text file with one prompt per line")
    if path.suffix.lower() == ".json":
        entries = load_json_entries(path, ("instruction",))
        for index, entry in enumerate(entries):
            if not isinstance(entry.get("input", ""), str):
                raise DataError(f"{path}: entry {index} has a non-text input; use a string "
                                "(\"\" for none)")
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text ({err}); save it as UTF-8") from None
        entries = [{"instruction": line.strip(), "input": ""} for line in lines if line.strip()]
        if not entries:
            raise DataError(f"{path} holds no prompts; write one prompt per line")
    train, _, test = split_entries(entries, shuffle=shuffle_split, seed=seed)
    if not train:
        raise DataError(f"{path}: {len(entries)} prompts leave no training prompts after "
                        "the 85/5/10 split; give at least 2")
    return [make_prompt(e, style) for e in train], [make_prompt(e, style) for e in test]
