"""What a run reports while it trains: a JSONL metrics log and a progress line on stderr.

``metrics.jsonl`` gets one JSON object per line, so a crash loses at most the line being
written and other tools (``scratchllm plot``, pandas, jq) can read it while the run goes on.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from scratchllm.utils.atomic import atomic_write_text

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


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """One status line: step, loss, tokens/s and time left.

    On a terminal the line is redrawn in place with ``\\r``; in a log file (not a TTY) a new
    line is printed every ``every`` steps instead, so logs stay readable.
    """

    def __init__(self, total_steps: int, *, every: int = 10, stream: TextIO | None = None,
                 start_step: int = 0) -> None:
        self.total_steps = total_steps
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start_step = start_step
        self.start_time = time.perf_counter()
        self._open_line = False

    def eta(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self.start_time) / done * (self.total_steps - step)

    def update(self, step: int, *, loss: float, tokens_per_sec: float, lr: float) -> None:
        if not self.tty and step % self.every and step != self.total_steps:
            return
        eta = self.eta(step)
        width = len(str(self.total_steps))
        text = (f"step {step:>{width}}/{self.total_steps} | loss {loss:.3f} | lr {lr:.2e} | "
                f"{tokens_per_sec:,.0f} tok/s | ETA {format_duration(eta) if eta == eta else '--:--'}")
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self._open_line = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A permanent line (eval results, samples) that does not clobber the status line."""
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
