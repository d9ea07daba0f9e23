"""``scratchllm`` entry point: one command with subcommands, each with its own ``--help``.

Every subcommand lives in its own module under ``scratchllm.cli`` and exposes
``register(subparsers)``, which adds a parser whose default ``func`` runs the command.
A ``ScratchLLMError`` becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from scratchllm import __version__
from scratchllm.errors import ScratchLLMError

# Order here is the order ``scratchllm --help`` lists them.
COMMAND_MODULES = [
    "scratchllm.cli.info",
    "scratchllm.cli.prepare",
    "scratchllm.cli.pretrain",
    "scratchllm.cli.plot",
    "scratchllm.cli.generate",
    "scratchllm.cli.chat",
    "scratchllm.cli.finetune",
    "scratchllm.cli.classify",
    "scratchllm.cli.evaluate",
    "scratchllm.cli.download",
    "scratchllm.cli.export",
    "scratchllm.cli.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchllm",
        description="Build, pretrain, fine-tune and run GPT-style language models from scratch.",
    )
    parser.add_argument("--version", action="version", version=f"scratchllm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


class Terminated(BaseException):
    """SIGTERM as an exception: it unwinds like Ctrl-C, so temp files and half-written folders
    are removed (``utils.atomic``) instead of left behind by Python's default, which kills the
    process at once. Not a KeyboardInterrupt: chat's "Ctrl-C stops the answer" must not catch
    it. Training loops install their own handler (``train.run_control``) that saves first."""


def _importing(frame) -> bool:
    """Whether ``frame`` runs inside an import (Python's import machinery is on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


_DEFERRED = {"times": 0}


def _terminate(signum, frame) -> None:
    if _importing(frame) and _DEFERRED["times"] < 250:
        # An exception raised inside an import can pass through a C extension's init, which
        # mangles it: numpy turns it into an ImportError traceback, torch aborts (SIGABRT).
        # The commands import torch & co. lazily, while the model loads: ask again shortly,
        # when the import is done (for at most ~5 s: a caller running us inside an import).
        _DEFERRED["times"] += 1
        again = threading.Timer(0.02, os.kill, (os.getpid(), signum))
        again.daemon = True
        again.start()
        return
    raise Terminated


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; a caller's thread keeps its own
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # stdout's reader went away (`scratchllm generate ... | head -1`): stop quietly, as cat
        # does, with stdout pointed at /dev/null so the interpreter's last flush cannot fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _sigterm_unwinds():
            return int(args.func(args) or 0)
    except ScratchLLMError as err:
        message = " ".join(line.strip() for line in str(err).strip().splitlines())
        print(f"scratchllm {args.command}: error: {message}", file=sys.stderr)  # one line
        return 2
    except KeyboardInterrupt:
        print(f"scratchllm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"scratchllm {args.command}: stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    except OSError as err:
        from scratchllm.utils.disk_full import is_disk_full

        if not is_disk_full(err):
            raise
        # every write is atomic (utils.atomic): the unfinished file or folder was removed and
        # what was there before is unchanged
        print(f"scratchllm {args.command}: error: the disk is full (no space left on device); "
              "nothing half-written was kept and earlier outputs are unchanged: free some space "
              "and run the command again", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
