"""``scratchllm chat``: talk with a model in the terminal, one line per message.

Answers stream to stdout as they are generated; notices (the prompt format, dropped turns,
a stopped answer) go to stderr, so ``printf 'hi\\n/quit\\n' | scratchllm chat ...`` leaves
only the answers on stdout. Ctrl-C during an answer stops that answer and keeps the chat;
Ctrl-C or Ctrl-D at the prompt, or /quit, ends it (exit 0).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from scratchllm.cli.generate import add_compile_flag, add_precision_flags, precision
from scratchllm.errors import ConfigError, ScratchLLMError

HELP = "Commands: /reset clears the history, /system TEXT sets the system message, /quit exits"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="Chat with any model scratchllm opens, in its own prompt format: its chat "
        "template (Llama 3, Qwen3, ...), the Alpaca or Phi-3 prompts of a model fine-tuned "
        "with 'scratchllm finetune instruct', or plain 'User:'/'Assistant:' text for a base "
        "model. One line is one message. " + HELP + ". Ctrl-C stops an answer; Ctrl-D, "
        "/quit or Ctrl-C at the prompt ends the chat. The oldest turns are dropped (with a "
        "notice) when the conversation no longer fits the context window.",
    )
    p.add_argument("--model", required=True,
                   help="model or run directory, a Hugging Face directory, or a Hub name")
    p.add_argument("--adapter", default=None,
                   help="LoRA adapter directory (PEFT layout, from scratchllm or peft) to merge "
                   "into --model")
    p.add_argument("--system", default=None, metavar="TEXT", help="the system message")
    p.add_argument("--prompt-style", default=None, choices=["template", "alpaca", "phi3", "plain"],
                   help="prompt format: the chat template, the book's Alpaca or Phi-3 "
                   "instruction prompts, or plain text (default: the prompt style the model was "
                   "fine-tuned with, else its chat template, else plain)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="longest answer in tokens (default 256, at most half the model's "
                   "context)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); higher = more random")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample only from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--min-p", type=float, default=None,
                   help="drop tokens below min_p x the top token's probability")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    add_precision_flags(p)
    add_compile_flag(p)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    p.set_defaults(func=run)


# Whether the terminal's current line holds text (the "> " prompt, or an answer being
# streamed): a chat ended by SIGTERM there ends that line first, so the one line the CLI
# prints about it starts a line of its own instead of running on after "> " or the answer.
_LINE = {"open": False}


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _read_line(interactive: bool) -> str | None:
    """The next message, or None at end of input (Ctrl-D, or the end of piped stdin)."""
    _LINE["open"] = interactive
    try:
        line = input("> " if interactive else "")
    except EOFError:
        _LINE["open"] = False
        if interactive:
            print()
        return None
    _LINE["open"] = False  # the user's Enter ended it
    return line


def _answer(session, text: str) -> None:
    """Stream one answer; Ctrl-C stops it (kept in the history, marked as cut)."""
    reply = None
    try:
        reply = session.ask(text)
        if reply.dropped:
            turns = "turn" if reply.dropped == 1 else "turns"
            _note(f"(dropped {reply.dropped} oldest {turns} to fit the "
                  f"{session.context_length}-token context)")
        for piece in reply:
            sys.stdout.write(piece)
            sys.stdout.flush()
            _LINE["open"] = True
    except ScratchLLMError as err:  # too long for the context, refused by the template, ...
        _note(f"not sent: {' '.join(str(err).split())}")
        return
    except KeyboardInterrupt:
        if reply is not None:
            reply.stop()
        _end_line()
        _note("[answer stopped; kept in the history as cut]" if reply is not None
              else "[stopped before the answer began]")
        return
    _end_line()


def _end_line() -> None:
    sys.stdout.write("\n")
    sys.stdout.flush()
    _LINE["open"] = False


def _command(session, line: str) -> bool:
    """Handle a /command; False means quit."""
    name, _, rest = line.partition(" ")
    if name in ("/quit", "/exit"):
        return False
    if name == "/reset":
        session.conversation.reset()
        _note("(history cleared)")
    elif name == "/system":
        session.conversation.set_system(rest.strip() or None)
        _note("(system message set; history cleared)" if rest.strip()
              else "(system message removed; history cleared)")
    elif name == "/help":
        _note(HELP)
    else:
        _note(f"unknown command {name!r}; {HELP} (start a message with '//' to send a '/')")
    return True


def run(args: argparse.Namespace) -> int:
    from scratchllm.chat import ChatSession, Sampling, choose_format
    from scratchllm.chat.session import default_answer_tokens
    from scratchllm.generate import check_sampling_args
    from scratchllm.utils.device import resolve_device
    from scratchllm.weights.auto import open_model

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    # a typo'd flag is reported before a multi-GB model loads (and before any output)
    check_sampling_args(args.temperature, args.top_k, args.top_p, args.min_p)
    device = resolve_device(args.device)
    loaded = open_model(args.model, device=device, require_tokenizer=True, adapter=args.adapter,
                        inference_only=True, compile=args.compile, **precision(args, device))
    prompt_format = choose_format(loaded.tokenizer, loaded.metadata, args.prompt_style)
    max_new_tokens = (args.max_new_tokens if args.max_new_tokens is not None
                      else default_answer_tokens(loaded.model.config.context_length))
    sampling = Sampling(max_new_tokens, args.temperature, args.top_k, args.top_p,
                        args.min_p, args.seed)
    session = ChatSession(loaded.model, loaded.tokenizer, prompt_format, eos_ids=loaded.eos_ids,
                          sampling=sampling, system=args.system)
    interactive = sys.stdin.isatty()
    try:  # a line that is not UTF-8 becomes U+FFFD characters instead of ending the chat
        sys.stdin.reconfigure(errors="replace")
    except (AttributeError, ValueError):
        pass
    if interactive:  # line editing and history for input()
        try:
            importlib.import_module("readline")
        except ImportError:
            pass
    _note(f"chatting with {loaded.source} in {prompt_format.description}; "
          f"{session.context_length}-token context. {HELP}.")
    try:
        _loop(session, interactive)
    except KeyboardInterrupt:  # Ctrl-C at the prompt (or between answers): leave quietly
        print(file=sys.stderr)
    except BaseException:  # SIGTERM at the prompt or mid-answer: the CLI says so, on its line
        if _LINE["open"]:
            _end_line()
        raise
    return 0


def _loop(session, interactive: bool) -> None:
    """Read messages until /quit or the end of input; answer each."""
    while True:
        line = _read_line(interactive)
        if line is None:
            return
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if line.startswith("/") and not line.startswith("//"):
            if not _command(session, line):
                return
            continue
        _answer(session, line[1:] if line.startswith("//") else line)
