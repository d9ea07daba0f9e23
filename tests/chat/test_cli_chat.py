"""``scratchllm chat`` as a user runs it: a subprocess reading its messages from a pipe.

The reference for every answer is ``transformers``: its chat template renders the same
conversation and its greedy ``generate`` continues it. stdout holds only the answers (one
line break after each), so it is compared whole.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from chat_support import CONTEXT, chat_env, hf_answer, run_chat

NEW = 12


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def test_multi_turn_reset_and_system_match_transformers(llama_dir, hf_tokenizer, hf_model):
    a, b = "Hello there", "What is the capital of France?"
    proc = _ok(run_chat(["--model", llama_dir, "--max-new-tokens", NEW],
                        f"{a}\n{b}\n/reset\n{b}\n/system Be brief.\n{a}\n\n/bogus\n/quit\nnever\n"))

    def answer(*messages):
        return hf_answer(hf_tokenizer, hf_model, list(messages), NEW)

    first = answer({"role": "user", "content": a})
    second = answer({"role": "user", "content": a}, {"role": "assistant", "content": first},
                    {"role": "user", "content": b})
    fresh = answer({"role": "user", "content": b})
    system = answer({"role": "system", "content": "Be brief."}, {"role": "user", "content": a})
    assert second != fresh and system != first  # history and system message change answers
    assert proc.stdout == f"{first}\n{second}\n{fresh}\n{system}\n"
    assert "chat template" in proc.stderr and f"{CONTEXT}-token context" in proc.stderr
    assert "history cleared" in proc.stderr and "unknown command '/bogus'" in proc.stderr


def test_oldest_turns_are_dropped_to_fit_the_context(llama_dir, hf_tokenizer, hf_model):
    """Each message is answered from the newest exchanges that leave room for the answer
    (counted with transformers' tokenizer); every drop is announced; a message that cannot fit
    even alone is refused and the chat goes on (to the end of input: exit 0)."""
    new = 32
    budget = CONTEXT - new
    users = [("Tell me a story about a cat who likes fish and milk. " * 4).strip(),
             ("What is the capital of France? Paris is the capital. " * 4).strip(),
             ("Hello there, how are you today? I am fine, thank you. " * 4).strip(),
             "Be brief and kind."]
    long = "The quick brown fox jumps over the lazy dog. " * 30
    proc = _ok(run_chat(["--model", llama_dir, "--max-new-tokens", new],
                        "\n".join(users[:3]) + f"\n{long}\n{users[3]}\n"))
    messages: list[dict] = []
    answers, notices = [], []
    for user in users:
        candidate = messages + [{"role": "user", "content": user}]
        dropped = 0
        while len(hf_tokenizer.apply_chat_template(
                candidate, add_generation_prompt=True, tokenize=True, return_dict=False,
                sanitize_control_tokens=True)) > budget:
            candidate = candidate[2:]
            dropped += 1
        if dropped:
            notices.append(f"(dropped {dropped} oldest turn{'s' if dropped > 1 else ''} to fit "
                           f"the {CONTEXT}-token context)")
        answers.append(hf_answer(hf_tokenizer, hf_model, candidate, new))
        messages = candidate + [{"role": "assistant", "content": answers[-1]}]
    assert notices, "the test's messages should need trimming"
    assert proc.stdout == "".join(f"{a}\n" for a in answers)
    assert [line for line in proc.stderr.splitlines() if line.startswith("(dropped")] == notices
    refused = [line for line in proc.stderr.splitlines() if line.startswith("not sent:")]
    assert len(refused) == 1 and f"exceeds the {CONTEXT}-token context" in refused[0]
    assert "lower --max-new-tokens" in refused[0]


def _start(directory, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scratchllm", "chat", "--model", str(directory), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=chat_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal has it


def _read_until(stream, needle: bytes, timeout: float = 120) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"waited for {needle!r}, got {seen!r}"
        chunk = os.read(stream.fileno(), 4096)
        assert chunk, f"stream closed before {needle!r}: {seen!r}"
        seen += chunk
    return seen


def test_ctrl_c_stops_the_answer_not_the_chat(endless_dir):
    """SIGINT while an endless answer streams stops that answer; the chat goes back to the
    prompt, where a second Ctrl-C ends it cleanly (exit 0)."""
    proc = _start(endless_dir, "--max-new-tokens", "4000")
    try:
        proc.stdin.write(b"Hello there\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "no answer began"
        shown = os.read(proc.stdout.fileno(), 64)
        proc.send_signal(signal.SIGINT)
        err = _read_until(proc.stderr, b"[answer stopped; kept in the history as cut]")
        time.sleep(0.3)  # back at the prompt
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err += rest
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and err.count(b"[answer stopped") == 1
    text = (shown + out).decode(errors="replace")
    assert text.strip() and len(text) < 4000  # the answer was cut far before its end
