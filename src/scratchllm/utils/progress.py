"""One progress display for every long job: training, fine-tuning, prepare, judging.

On a terminal it is a tqdm bar (redrawn in place, with rate and ETA). Anywhere else (CI logs,
pipes, files) tqdm's carriage returns would pile up into one unreadable line, so a plain line
is printed every ``every`` updates instead (and at the end), optionally no more often than
every ``interval`` seconds. It lives in ``utils`` so that every layer can report progress.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """``65 -> "01:05"``, ``3725 -> "1:02:05"``."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def is_terminal(stream: TextIO) -> bool:
    """True for an interactive stream (a closed or odd stream counts as not one)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """Progress over ``total`` units (steps, items, pieces), starting at ``start_step``.

    ``advance(done, status)`` moves to ``done`` units and shows ``status``; ``update`` is the
    training flavour (loss, lr, tokens/s). ``message`` prints a permanent line (eval results,
    samples) without clobbering the bar. The tqdm bar is created at the first update, so
    ``start_step`` may still be set after construction (a resumed run).
    """

    def __init__(self, total_steps: int, *, every: int = 10, stream: TextIO | None = None,
                 start_step: int = 0, unit: str = "step", desc: str | None = None,
                 interval: float = 0.0) -> None:
        self.total_steps = total_steps
        self.every = max(1, every)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_terminal(self.stream)
        self.start_step = start_step
        self.unit = unit
        self.desc = desc
        self.interval = interval
        self.start_time = time.perf_counter()
        self._bar: Any = None
        self._last_print = float("-inf")

    def eta(self, step: int) -> float:
        """Seconds left at the average pace since the start (NaN before any progress)."""
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self.start_time) / done * (self.total_steps - step)

    def update(self, step: int, *, loss: float, tokens_per_sec: float, lr: float) -> None:
        """A training step's line: loss, learning rate and throughput."""
        self.advance(step, f"loss {loss:.3f} | lr {lr:.2e} | {tokens_per_sec:,.0f} tok/s")

    def advance(self, done: int, status: str = "") -> None:
        """Move to ``done`` of ``total_steps`` units, showing ``status`` next to the count."""
        if self.tty:
            bar = self._tqdm()
            if status:
                bar.set_postfix_str(status, refresh=False)
            bar.update(done - bar.n)
            return
        final = done >= self.total_steps
        if not final and (done % self.every
                          or time.perf_counter() - self._last_print < self.interval):
            return
        self._last_print = time.perf_counter()
        eta = self.eta(done)
        width = len(str(self.total_steps))
        parts = [f"{self.unit} {done:>{width}}/{self.total_steps}", status,
                 f"ETA {format_duration(eta) if eta == eta else '--:--'}"]
        prefix = f"{self.desc}: " if self.desc else ""
        self._write(prefix + " | ".join(p for p in parts if p) + "\n")

    def message(self, text: str) -> None:
        """A permanent line above the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self._write(text + "\n")

    def close(self) -> None:
        """End the bar (leaving its last state on screen); plain mode has nothing to end."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tqdm(self) -> Any:
        if self._bar is None:
            from tqdm import tqdm  # imported late: plain-line runs never need it

            self._bar = tqdm(total=self.total_steps, initial=self.start_step, file=self.stream,
                             unit=self.unit, desc=self.desc, dynamic_ncols=True, leave=True)
        return self._bar

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
