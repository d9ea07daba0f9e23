"""Controlling a run from outside the loop: random state, Ctrl-C, and who gets to print."""

from __future__ import annotations

import io
import random
import signal
from typing import Any, Callable, TextIO

import numpy as np
import torch

from scratchllm.model.cpu_matmul import onednn_linears
from scratchllm.utils.heap import retained_heap
from scratchllm.utils.progress import Progress


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so runs repeat exactly on the CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The states of python ``random``, numpy's global generator and torch's generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every generator back; CUDA/MPS states are restored only where that device exists."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        for index, cuda_state in enumerate(cuda_states):
            torch.cuda.set_rng_state(cuda_state, index)
    if "mps" in state and getattr(torch.backends, "mps", None) is not None \
            and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


class Silent(io.TextIOBase):
    """Where the progress lines of ranks > 0 go: rank 0 speaks for the job."""

    def write(self, text: str) -> int:
        return len(text)


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request to stop at the next step boundary.

    Stopping mid-step could save half-updated weights; a flag checked between steps cannot.
    SIGTERM is what job schedulers, ``kill`` and ``docker stop`` send before they kill, so it
    saves exactly like Ctrl-C. ``signum`` records which signal asked (the command exits with
    128 + signum: 130 for Ctrl-C, 143 for SIGTERM). A second signal raises KeyboardInterrupt
    at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals are not ours to handle
                break
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:  # None: a handler installed outside Python, can't restore
                signal.signal(signum, previous)
        self._previous = {}


def run_steps(one_step: Callable[[], None], current_step: Callable[[], int], *, end: int,
              total: int, save: Callable[[], None], save_every: int = 0
              ) -> tuple[bool, int | None]:
    """Step until ``current_step()`` reaches ``end``, saving every ``save_every`` steps and
    whenever the run stops before ``total`` (Ctrl-C, SIGTERM, or ``end < total``).

    Returns (stopped early, the signal that asked or None). The fine-tuning loop and the RL
    trainer share it, so both stop, save and resume the same way, and both step with the
    heap retained (``utils.heap``) and, on AMD CPUs, float32 linear layers through oneDNN
    (``model.cpu_matmul.onednn_linears``), as pretraining does."""
    with StopRequest() as stop, retained_heap(), onednn_linears():
        while current_step() < end:
            one_step()
            step = current_step()
            stopped = step < total and (stop.requested or step == end)
            if stopped or (save_every and step % save_every == 0):
                save()
            if stopped:
                return True, stop.signum if stop.requested else None
    return False, None


def check_not_past_end(where: Any, step: int, total: int) -> None:
    """Refuse resuming ``where`` at ``step`` with fewer ``total`` steps asked for: it would
    end at once, saying nothing (pretraining and PPO/GRPO alike)."""
    if step > total:
        from scratchllm.errors import ConfigError

        raise ConfigError(f"cannot resume {where}: it is at step {step}, past the {total} "
                          f"steps asked for; pass --max-steps {step + 1} or more")


def stopped_message(stop_signal: int | None, step: int, checkpoint: Any) -> str:
    """The line a stopped run prints: why it stopped, where it saved, how to go on."""
    why = {signal.SIGINT: "interrupted", signal.SIGTERM: "stopped by SIGTERM"}.get(
        stop_signal, "stopped")
    return f"{why} at step {step}; saved {checkpoint}; continue with --resume"


def report_stopped(progress: Progress | None, stop_signal: int | None, step: int,
                   checkpoint: Any, stream: TextIO | None = None) -> None:
    """Say ``stopped_message`` once, through the run's progress display. With progress off,
    a signal's stop is still said (a display made for this one line): a user who pressed
    Ctrl-C needs to know how to go on even with ``--quiet``; a caller's ``stop_at`` is not."""
    if progress is None and stop_signal is None:
        return
    shown = progress if progress is not None else Progress(step, stream=stream)
    shown.message(stopped_message(stop_signal, step, checkpoint))
