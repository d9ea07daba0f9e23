"""What a run reports while it trains: a JSONL metrics log and a progress line on stderr.

``metrics.jsonl`` gets one JSON object per line, so a crash loses at most the line being
written and other tools (``scratchllm plot``, pandas, jq) can read it while the run goes on.
The progress display lives in ``scratchllm.utils.progress`` (every layer uses it); it is
re-exported here for code that imported it from this module.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from scratchllm.utils.atomic import atomic_write_text
from scratchllm.utils.progress import Progress, format_duration

__all__ = ["METRICS_FILE", "MetricsLog", "Progress", "format_duration", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends records like ``{"event": "eval", "step": 20, "val_loss": 3.2, ...}``.

    Events: ``train`` (every ``log_every`` steps: the step's loss, lr, tokens/s) and ``eval``
    (train/val loss estimates and validation perplexity).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step``: after resuming from an older checkpoint they are redone."""
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _plain(v) for k, v in record.items()}) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def _plain(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a metrics file (a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
