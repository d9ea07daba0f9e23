"""The ``scratchllm`` command line as the e2e tests run it (see ``CLI``)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


class CLI:
    """Runs ``python -m scratchllm ARGV`` in a clean, offline environment.

    By default each command is a child forked from ``e2e_zygote`` (a process started with
    the same environment that has already imported torch), which saves seconds per command;
    ``spawn=True``, or ``SCRATCHLLM_E2E_SPAWN=1`` for every command, starts the interpreter
    from scratch instead.
    """

    def __init__(self, env: dict[str, str], cwd: Path, scratch: Path) -> None:
        self.env, self.cwd, self.scratch = env, cwd, scratch
        self.spawn_all = os.environ.get("SCRATCHLLM_E2E_SPAWN", "") not in ("", "0")
        self._zygote: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._count = itertools.count()

    def close(self) -> None:
        if self._zygote is not None:
            self._zygote.stdin.close()
            self._zygote.wait(timeout=120)  # generous: a loaded CI machine is slow to unwind

    def start(self, argv: list[str], *, stdin: str | None = None,
              spawn: bool = False) -> tuple:
        """Start a command (``stdin``: text for its standard input); ``finish`` waits for it."""
        argv = [str(a) for a in argv]
        n = next(self._count)
        files = {k: str(self.scratch / f"{n}.{k}") for k in ("stdout", "stderr", "rc", "stdin")}
        Path(files["stdin"]).write_text(stdin or "", encoding="utf-8")
        if spawn or self.spawn_all:
            with open(files["stdin"], "rb") as given, open(files["stdout"], "wb") as out, \
                    open(files["stderr"], "wb") as err:
                proc = subprocess.Popen([sys.executable, "-m", "scratchllm", *argv],
                                        env=self.env, cwd=self.cwd, stdin=given, stdout=out,
                                        stderr=err)
            return argv, proc, files
        with self._lock:
            if self._zygote is None:
                self._zygote = subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("e2e_zygote.py"))],
                    env=self.env, cwd=self.cwd, text=True, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE)
            self._zygote.stdin.write(json.dumps({"argv": argv, "cwd": str(self.cwd),
                                                 **files}) + "\n")
            self._zygote.stdin.flush()
            reply = self._zygote.stdout.readline()
        assert reply, "the e2e zygote died; rerun with SCRATCHLLM_E2E_SPAWN=1 to see why"
        return argv, json.loads(reply)["pid"], files

    def finish(self, started: tuple, timeout: float = 300) -> subprocess.CompletedProcess:
        argv, proc, files = started
        if isinstance(proc, subprocess.Popen):
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        else:
            rc, deadline = Path(files["rc"]), time.monotonic() + timeout
            while not rc.exists():
                try:
                    os.kill(proc, 0)
                except ProcessLookupError:  # gone without an exit code: killed by a signal
                    if not rc.exists():
                        rc.write_text("-9")
                    break
                if time.monotonic() > deadline:
                    os.kill(proc, signal.SIGKILL)
                    raise subprocess.TimeoutExpired(argv, timeout)
                time.sleep(0.02)
            code = int(rc.read_text())
        read = lambda key: Path(files[key]).read_text(encoding="utf-8")  # noqa: E731
        return subprocess.CompletedProcess(argv, code, read("stdout"), read("stderr"))

    @staticmethod
    def signal(started: tuple, signum: int) -> None:
        proc = started[1]
        if isinstance(proc, subprocess.Popen):
            proc.send_signal(signum)
        else:
            os.kill(proc, signum)

    def run(self, argv: list[str], *, stdin: str | None = None, spawn: bool = False,
            timeout: float = 300) -> subprocess.CompletedProcess:
        return self.finish(self.start(argv, stdin=stdin, spawn=spawn), timeout)

    def ok(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        proc = self.run(argv, **kwargs)
        assert proc.returncode == 0, (f"scratchllm {' '.join(map(str, argv))} exited "
                                      f"{proc.returncode}\nstdout:\n{proc.stdout}\n"
                                      f"stderr:\n{proc.stderr}")
        assert "Traceback" not in proc.stderr
        return proc

    def many(self, argvs: list[list[str]]) -> list[subprocess.CompletedProcess]:
        """Independent commands that must all succeed, two at a time (this is a 2-core box)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(self.ok, argvs))

    def error(self, argv: list[str], command: str, **kwargs) -> str:
        """Exit 2 with exactly one stderr line ``scratchllm COMMAND: error: ...``; returns it."""
        proc = self.run(argv, **kwargs)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2, (f"expected exit 2, got {proc.returncode}\nstdout:\n"
                                      f"{proc.stdout}\nstderr:\n{proc.stderr}")
        assert "Traceback" not in proc.stderr + proc.stdout
        assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
        assert lines[0].startswith(f"scratchllm {command}: error: "), lines[0]
        return lines[0]
