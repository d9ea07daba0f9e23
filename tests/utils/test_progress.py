"""The progress display: tqdm on a terminal, plain periodic lines anywhere else."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

from tqdm import tqdm

from scratchllm.train.metrics import Progress as ReExported
from scratchllm.utils.progress import Progress, format_duration


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_every_n_steps_when_not_a_terminal():
    stream = io.StringIO()  # isatty() is False, like a CI log
    progress = Progress(10, every=4, stream=stream)
    for step in range(1, 11):
        progress.update(step, loss=2.0, tokens_per_sec=1234.0, lr=1e-3)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["4/10", "8/10", "10/10"]
    assert "loss 2.000" in lines[0] and "1,234 tok/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].endswith("ETA 00:00")
    assert "\r" not in stream.getvalue()


def test_plain_lines_respect_the_interval_but_always_show_the_end():
    stream = io.StringIO()
    progress = Progress(50, every=1, interval=3600.0, stream=stream, unit="piece", desc="prepare")
    for done in range(1, 51):
        progress.advance(done, "12 MB")
    lines = stream.getvalue().splitlines()
    assert lines == [lines[0], lines[-1]] and len(lines) == 2
    assert lines[0].startswith("prepare: piece  1/50 | 12 MB | ETA")
    assert lines[1].startswith("prepare: piece 50/50 | 12 MB | ETA")


def test_a_terminal_gets_a_tqdm_bar():
    stream = FakeTerminal()
    progress = Progress(4, every=100, stream=stream, start_step=1)
    progress.update(2, loss=1.5, tokens_per_sec=10.0, lr=1e-3)
    assert isinstance(progress._bar, tqdm) and progress._bar.n == 2
    progress.message("step 2: val loss 1.0")
    progress.update(4, loss=1.25, tokens_per_sec=10.0, lr=1e-3)
    progress.close()
    out = stream.getvalue()
    assert "\r" in out  # redrawn in place
    assert "4/4" in out and "loss 1.250" in out  # tqdm's count and our status
    assert "step 2: val loss 1.0\n" in out
    assert progress._bar is None


def test_subprocess_with_piped_stderr_gets_plain_lines():
    # The default stream is the process's stderr; piped, it is no terminal.
    script = textwrap.dedent("""
        from scratchllm.utils.progress import Progress
        progress = Progress(6, every=2, unit="item")
        for done in range(1, 7):
            progress.advance(done, f"score {done * 10}")
        progress.message("done")
        progress.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    lines = done.stderr.splitlines()
    assert [line.split(" | ")[:2] for line in lines[:-1]] == [
        ["item 2/6", "score 20"], ["item 4/6", "score 40"], ["item 6/6", "score 60"]]
    assert lines[-1] == "done"


def test_train_metrics_reexports_the_helper():
    assert ReExported is Progress


def test_format_duration():
    assert format_duration(65) == "01:05" and format_duration(3725) == "1:02:05"
