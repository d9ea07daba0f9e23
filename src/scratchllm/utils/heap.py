"""Keep freed memory in the process while training, so each step reuses the last step's pages.

A training step frees and reallocates the same tensors every time: activations, the
attention weights, the head's logits chunks and, with ``zero_grad(set_to_none=True)``, every
gradient (the 124M GPT-2's head and embedding gradients are 154 MB each). glibc's malloc
hands allocations above its mmap threshold (at most 32 MB) straight to the kernel and gives
the top of its heap back whenever more than the trim threshold is free, so the next step
touches fresh pages again: on a 2-core CPU that was ~100k page faults and 7-10% of a
step's CPU time spent in the kernel zeroing pages. ``retained_heap`` tells malloc to serve
everything from its heap and never trim it for the duration; afterwards the defaults are
put back and the free memory is returned with ``malloc_trim``.

Only glibc (Linux) has these knobs; elsewhere this is a no-op. The memory a run reaches at
its peak stays reserved until the context exits, which a training process wants anyway.
Pretraining (fixed shapes, the 124M model): flat memory and no page faults from the third
step on. Fine-tuning, whose batches change shape from step to step (DPO at the 124M shape,
4 pairs a step, 40 steps): 125-150k page faults and 0.24 s of system time a step fell to
about 10 and 0.015 s, and the resident memory settled after 8 steps at the largest batch's
peak, 40 MB above what the default allocator reached. The pretraining trainer and
``train.run_control.run_steps`` (fine-tuning, RL) step inside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import threading
from typing import Iterator

# mallopt parameters (malloc.h) and glibc's documented defaults
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
NEVER_TRIM = 2 ** 31 - 1  # mallopt takes an int

_lock = threading.Lock()
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def retained_heap() -> Iterator[bool]:
    """Within the block, malloc reuses freed memory instead of returning it to the kernel.

    Yields whether the setting could be applied (glibc only). Nested uses are fine: the
    outermost one restores the defaults.
    """
    global _depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
