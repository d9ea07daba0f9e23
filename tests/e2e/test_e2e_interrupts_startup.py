"""SIGTERM before ``chat`` and ``serve`` are up: while they import torch & co. and load the
model, and (serve) while uvicorn starts. A service manager or a user's ``kill`` does not wait
for a model to load.

The moments are made exact: the command runs in a child Python that sends itself SIGTERM
at that point (``_SIGTERM_AT``), the way a signal from outside lands there by chance.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# MOMENT, then the command's argv. "numpy-init": when numpy's C extension, mid-import,
# imports ``datetime`` (a Python exception raised there comes back as numpy's ImportError
# traceback; torch's import aborted the process); "weights": when the weights file is read;
# "uvicorn": when uvicorn's server starts, before it has installed its signal handlers.
_SIGTERM_AT = """
import importlib.abc, os, signal, sys
moment, argv = sys.argv[1], sys.argv[2:]
def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)
if moment == "numpy-init":
    assert "datetime" not in sys.modules and "numpy" not in sys.modules
    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "datetime" and "numpy" in sys.modules:
                sys.meta_path.remove(self)
                sigterm()
    sys.meta_path.insert(0, Hook())
elif moment == "weights":
    import safetensors.torch
    load_file = safetensors.torch.load_file
    def loading(*args, **kwargs):
        sigterm()
        return load_file(*args, **kwargs)
    safetensors.torch.load_file = loading
elif moment == "uvicorn":
    import uvicorn
    serve = uvicorn.Server.serve
    def starting(self, *args, **kwargs):
        sigterm()
        return serve(self, *args, **kwargs)
    uvicorn.Server.serve = starting
from scratchllm.cli.main import main
sys.exit(main(argv))
"""


def _on_a_terminal(argv: list, cli_runner, timeout: float = 60) -> tuple[int, str, bool]:
    """Run ``python -c _SIGTERM_AT ARGV`` on a pty (stdin, stdout and stderr): its exit
    code, everything it showed, and whether the terminal's modes are as before."""
    import os
    import pty
    import select
    import termios
    import time

    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-c", _SIGTERM_AT, *map(str, argv)], stdin=slave,
                            stdout=slave, stderr=slave, env=cli_runner.env, cwd=cli_runner.cwd)
    shown, deadline = b"", time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.05)[0]:
                shown += os.read(master, 65536)
        code = proc.wait(1)  # still running: it was never stopped (TimeoutExpired)
        while select.select([master], [], [], 0.1)[0]:
            try:
                shown += os.read(master, 65536)
            except OSError:  # the child closed its side and all is read
                break
        kept = termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
    return code, shown.decode("utf-8", "replace"), kept


@pytest.mark.parametrize("moment", ["numpy-init", "weights"])
def test_chat_sigterm_while_the_model_loads_is_one_line_and_143(cli_runner, chatty_model,
                                                                moment):
    """``chat`` on a terminal, SIGTERM before its prompt: exit 143 and the one line, nothing
    else on the screen (no banner), no traceback, the terminal's modes as they were. During
    numpy's import it was an ImportError traceback and exit 1; the signal now waits for the
    import to finish."""
    code, shown, kept = _on_a_terminal([moment, "chat", "--model", chatty_model,
                                        "--device", "cpu"], cli_runner)
    assert (code, shown) == (143, "scratchllm chat: stopped by SIGTERM\r\n"), shown[-3000:]
    assert kept


@pytest.mark.parametrize("moment", ["weights", "uvicorn"])
def test_serve_sigterm_while_starting_exits_0_at_once(cli_runner, chatty_model, moment):
    """``serve`` stopped by SIGTERM before it is up exits 0, as a server stopped once up
    does (after its drain), with no traceback: while the model loads, one line saying
    nothing was served (was: exit 143, unlike serve's other stops); while uvicorn starts,
    it shuts down at once (was: the signal was lost and it served on)."""
    from e2e_support import free_port

    done = subprocess.run([sys.executable, "-c", _SIGTERM_AT, moment, "serve", "--model",
                           str(chatty_model), "--device", "cpu", "--port", str(free_port())],
                          env=cli_runner.env, cwd=cli_runner.cwd, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    if moment == "uvicorn":  # uvicorn's own start and stop lines
        assert "Shutting down" in done.stderr and "Finished server process" in done.stderr
    else:
        assert done.stdout == "" and done.stderr == (
            "scratchllm serve: stopped by SIGTERM while loading the model; nothing was "
            "served\n")
