"""utils.heap.retained_heap: big tensors come from malloc's heap, which is not trimmed, so a
training step reuses the last one's pages; glibc's defaults come back afterwards.

Runs in a fresh interpreter: malloc's state in the test process depends on every test before.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from scratchllm.utils import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="glibc's mallopt only")

SCRIPT = textwrap.dedent("""
    import json, torch
    from scratchllm.utils.heap import retained_heap

    BIG = 40 << 20  # above glibc's largest mmap threshold (32 MB): mmapped by default

    def heap_range():
        with open("/proc/self/maps") as maps:
            line = next(line for line in maps if line.rstrip().endswith("[heap]"))
        start, end = line.split()[0].split("-")
        return int(start, 16), int(end, 16)

    def in_heap():
        tensor = torch.ones(BIG // 4)
        start, end = heap_range()
        return start <= tensor.data_ptr() < end

    def resident():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096

    out = {"before": in_heap()}
    with retained_heap() as applied:
        with retained_heap():
            pass
        out["applied"], out["inside"] = applied, in_heap()  # the inner exit changed nothing
        end = heap_range()[1]
        out["kept"] = heap_range()[1] == end and end - heap_range()[0] >= BIG
        held = resident()
    out["given_back"] = held - resident() >= BIG // 2  # malloc_trim released the free pages
    out["after"] = in_heap()
    print(json.dumps(out))
""")


def test_big_tensors_use_the_untrimmed_heap_inside_and_mmap_after():
    result = json.loads(subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True,
                                       text=True, check=True, timeout=120).stdout)
    assert result == {"before": False, "applied": True, "inside": True, "kept": True,
                      "after": False, "given_back": True}



RUN_STEPS = textwrap.dedent("""
    import json, torch
    from scratchllm.train.run_control import run_steps

    def in_heap():
        tensor = torch.ones((40 << 20) // 4)  # above glibc's largest mmap threshold
        with open("/proc/self/maps") as maps:
            line = next(line for line in maps if line.rstrip().endswith("[heap]"))
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        return start <= tensor.data_ptr() < end

    seen, steps = [], [0]

    def one_step():
        seen.append(in_heap())
        steps[0] += 1

    stopped, _ = run_steps(one_step, lambda: steps[0], end=2, total=2, save=lambda: None)
    print(json.dumps({"stopped": stopped, "inside": seen, "after": in_heap()}))
""")


def test_run_steps_steps_inside_the_retained_heap():
    """Fine-tuning and RL step through run_steps: their big step tensors come from the heap."""
    result = json.loads(subprocess.run([sys.executable, "-c", RUN_STEPS], capture_output=True,
                                       text=True, check=True, timeout=120).stdout)
    assert result == {"stopped": False, "inside": [True, True], "after": False}
