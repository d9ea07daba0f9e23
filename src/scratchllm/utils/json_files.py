"""Reading the small JSON files that describe models and tokenizers, with errors that say why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scratchllm.errors import CheckpointError, ScratchLLMError


def read_json_object(path: Path, *, error: type[ScratchLLMError] = CheckpointError,
                     fix: str = "download or re-save the file") -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` (naming the file and ``fix``) if it is unreadable,
    not JSON, or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}); {fix}") from err
    if not isinstance(value, dict):
        raise error(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value
