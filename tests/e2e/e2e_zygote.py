"""``python -m scratchllm ARGV`` without paying the torch import on every command.

Every ``scratchllm`` process spends seconds importing torch (and torch._dynamo, which
building a model on the meta device pulls in) before it does anything; the e2e tests run
dozens of commands. This helper is started once per test session, *as a subprocess with the
tests' environment*, imports what every command imports, and then forks one child per
command. The child is a fresh process like ``python -m scratchllm``: its own stdout/stderr
(files the tests read), working directory, ``sys.argv`` and exit code, an uncaught exception
printed as a traceback with exit code 1, exactly as the interpreter does. The helper itself
runs no torch operation before forking, so no thread pool is inherited.

Protocol (one JSON object per line): the tests write ``{"argv", "cwd", "stdout", "stderr",
"rc"}`` (and optionally ``"stdin"``, a file to read standard input from); the helper answers ``{"pid"}`` and the child writes its exit code to ``rc`` last.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import traceback


def _child(request: dict) -> int:
    os.chdir(request["cwd"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.dup2(os.open(request.get("stdin") or os.devnull, os.O_RDONLY), 0)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  line_buffering=True)
    sys.argv = ["scratchllm", *request["argv"]]
    from scratchllm.cli.main import main

    try:
        code = main(request["argv"])
    except SystemExit as stop:  # argparse errors, --help, --version
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    return int(code or 0)


def serve() -> None:
    import torch  # noqa: F401  the import every command pays
    import torch._dynamo  # noqa: F401  pulled in by building models on the meta device
    import scratchllm.cli.main  # noqa: F401
    import scratchllm.weights.auto  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    replies = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 1
            try:
                code = _child(request)
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    with open(request["rc"] + ".tmp", "w") as handle:
                        handle.write(str(code))
                    os.replace(request["rc"] + ".tmp", request["rc"])
                finally:
                    os._exit(code)
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
