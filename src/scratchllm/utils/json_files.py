"""Reading the small JSON files that describe models and tokenizers, with errors that say why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scratchllm.errors import CheckpointError, ScratchLLMError


def describe_json_error(err: BaseException) -> str:
    """A short reason for a failed ``json.loads``: the parser's own message, or what the
    RecursionError of nesting deeper than Python's stack means."""
    if isinstance(err, RecursionError):
        return "nested too deeply to parse"
    return str(err)


def read_json_object(path: Path, *, error: type[ScratchLLMError] = CheckpointError,
                     fix: str = "download or re-save the file") -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` (naming the file and ``fix``) if it is unreadable,
    not JSON, or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad UTF-8, bad JSON,
        # or an integer too long to convert; RecursionError: nesting deeper than Python's stack
        raise error(f"{path} is not valid JSON ({describe_json_error(err)}); {fix}") from err
    if not isinstance(value, dict):
        raise error(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value
