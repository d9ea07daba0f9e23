"""Controlling a run from outside the loop: seeding, Ctrl-C, and who gets to print."""

from __future__ import annotations

import io
import random
import signal

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so runs repeat exactly on the CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Silent(io.TextIOBase):
    """Where the progress lines of ranks > 0 go: rank 0 speaks for the job."""

    def write(self, text: str) -> int:
        return len(text)


class StopRequest:
    """Turns the first Ctrl-C into a request to stop at the next step boundary.

    Stopping mid-step could save half-updated weights; a flag checked between steps cannot.
    A second Ctrl-C raises KeyboardInterrupt at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequest":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C is not ours to handle
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
