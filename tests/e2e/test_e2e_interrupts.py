"""Interrupted and refused work: a signal or a bad output path never costs the user the last
good state, and never leaves temp files behind.

SIGTERM is what ``kill``, job schedulers and ``docker stop`` send. Python's default for it ends
the process on the spot, skipping the clean-up that removes temp files (``utils.atomic``); the
CLI turns it into an exception instead, so every command unwinds as it does for Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from e2e_support import corpus_text, tree_bytes

pytestmark = pytest.mark.slow


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def _ended(started: tuple) -> bool:
    proc = started[1]
    if isinstance(proc, subprocess.Popen):  # SCRATCHLLM_E2E_SPAWN=1
        return proc.poll() is not None
    try:
        os.kill(proc, 0)  # a child of the e2e zygote, reaped as soon as it exits
    except ProcessLookupError:
        return True
    return Path(started[2]["rc"]).exists()


def _wait_for(condition, started, cli_runner, seconds: float = 60) -> None:
    """Poll ``condition`` every 2 ms; fail at once if the command ended first (too fast)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if _ended(started) or time.monotonic() > deadline:
            pytest.fail("the moment to signal never came:\n"
                        + cli_runner.finish(started, timeout=10).stderr)
        time.sleep(0.002)


def test_sigterm_mid_prepare_keeps_the_earlier_output_and_no_temp_files(cli, cli_runner,
                                                                        corpus_file, tmp_path):
    """``prepare --overwrite`` stopped by SIGTERM while it writes: exit 143 with one line, the
    previous train.bin/val.bin and sidecars byte-identical, no ``.train.bin.tmp-*`` left (the
    default SIGTERM left temp files as big as the corpus, never cleaned by a rerun)."""
    out = tmp_path / "tokens"
    cli(["prepare", corpus_file, "--out", out, "--workers", "1"])
    before = tree_bytes(out)
    big = tmp_path / "big.txt"
    big.write_text(corpus_text() * 1500, encoding="utf-8")  # ~9 MB: a few seconds of work
    started = cli_runner.start(["prepare", big, "--out", out, "--overwrite", "--workers", "1",
                                "--chunk-kb", "64"])
    # mid-run: the new train.bin has received its first tokens
    _wait_for(lambda: any(p.stat().st_size > 0 for p in out.glob(".train.bin.tmp-*")),
              started, cli_runner)
    cli_runner.signal(started, signal.SIGTERM)
    done = cli_runner.finish(started, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "scratchllm prepare: stopped by SIGTERM", done.stderr
    assert "Traceback" not in done.stderr
    assert _temps(out) == []
    assert tree_bytes(out) == before


@pytest.fixture
def users_file(tmp_path) -> Path:
    """The user's own file where a command might be told to write."""
    path = tmp_path / "mine" / "results.json"
    path.parent.mkdir()
    path.write_text('{"my": "notes"}\n')
    return path


def test_file_outputs_refuse_a_users_file_or_a_folder(cli, cli_error, pretrain_run, gpt2_hf_dir,
                                                      spam_file, users_file, tmp_path):
    """``plot --out`` and ``evaluate classification --out`` name one file: a user's file there
    is refused untouched (they replaced it), and a folder is one line, not an
    IsADirectoryError traceback after all the work; their own earlier file is replaced."""
    png = users_file.with_name("holiday.png")
    png.write_bytes(b"\x89PNG\r\n\x1a\n my photo")
    folder = users_file.parent
    before = tree_bytes(folder)
    for target in (png, users_file, folder):
        line = cli_error(["plot", pretrain_run, "--out", target], "plot")
        assert str(target) in line
    # the check runs before the model loads, so a model is not even needed to be refused
    for target in (users_file, folder):
        line = cli_error(["evaluate", "classification", "--model", gpt2_hf_dir, "--data",
                          spam_file, "--out", target], "evaluate")
        assert str(target) in line
    assert tree_bytes(folder) == before
    ours = tmp_path / "plots" / "loss.png"  # a missing folder is created, as for --out DIR
    cli(["plot", pretrain_run, "--out", ours])
    first = ours.read_bytes()
    cli(["plot", pretrain_run, "--out", ours])  # a rerun replaces its own plot
    assert ours.read_bytes() == first and first.startswith(b"\x89PNG")


@pytest.fixture
def full_disk(tmp_path):
    """A 4 MiB tmpfs (root only) and ``fill()``, which leaves it a few KiB of free space."""
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and the mount command")
    point = tmp_path / "disk"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def fill() -> None:
        free = shutil.disk_usage(point).free
        (point / "filler").write_bytes(b"\0" * max(0, free - 8192))

    try:
        yield point, fill
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_full_disk_during_export_is_one_line_and_keeps_the_last_export(cli, cli_error,
                                                                         gpt2_hf_dir, full_disk):
    """``export --overwrite`` (hf and gguf) onto a full disk: exit 2 with one line, not a
    traceback (gguf's writer reports a short write with no errno), the earlier export intact and
    no temp files left."""
    disk, fill = full_disk
    hf, gguf = disk / "hf", disk / "model.gguf"
    cli(["export", gpt2_hf_dir, "--to", "hf", hf])
    cli(["export", gpt2_hf_dir, "--to", "gguf", gguf, "--type", "f32"])
    before_hf, before_gguf = tree_bytes(hf), gguf.read_bytes()
    fill()
    for argv in (["export", gpt2_hf_dir, "--to", "hf", hf, "--overwrite"],
                 ["export", gpt2_hf_dir, "--to", "gguf", gguf, "--type", "f32", "--overwrite"]):
        line = cli_error(argv, "export")
        assert "disk is full" in line and "unchanged" in line
    assert tree_bytes(hf) == before_hf and gguf.read_bytes() == before_gguf
    assert _temps(disk) == [] and _temps(hf) == []


def _kill_when(cli_runner, argv: list, pattern: str, where: Path) -> None:
    """Start ``argv``, SIGKILL it the moment ``where`` holds an entry matching ``pattern``
    (a save in progress), and wait for it to be gone."""
    started = cli_runner.start(argv)
    _wait_for(lambda: any(where.glob(pattern)) if where.is_dir() else False, started, cli_runner)
    cli_runner.signal(started, signal.SIGKILL)
    assert cli_runner.finish(started, timeout=60).returncode == -signal.SIGKILL


def _records(run: Path) -> list[dict]:
    import json

    timing = ("time", "elapsed", "seconds", "tokens_per_sec")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_while_the_final_model_is_saved_then_resume_finishes_clean(
        cli, cli_runner, pretrain_run, preference_file, tmp_path):
    """``finetune reward`` killed (SIGKILL: nothing can clean up) while it writes OUT/model
    after its last checkpoint: --resume has no step left, writes the model, and the killed
    save's temp folder is removed (it stayed, as big as the model, since no checkpoint save
    followed to sweep it). The metrics equal an uninterrupted run's."""
    # the tiny preset (GPT-2's vocabulary: 26 MB of weights) takes long enough to save that
    # the kill lands inside the save; a 300-token model's save is over before it is seen
    args = ["finetune", "reward", "--model", pretrain_run / "latest", "--data", preference_file,
            "--batch-size", "4", "--save-every", "2", "--seed", "5"]
    straight, run = tmp_path / "straight", tmp_path / "run"
    cli([*args, "--out", straight])
    _kill_when(cli_runner, [*args, "--out", run], ".model.tmp-*", run)
    assert not (run / "model").exists()
    cli([*args, "--out", run, "--resume"])
    assert _temps(run) == []
    assert (run / "model" / "model.safetensors").is_file()
    assert _records(run) == _records(straight)


def test_sigkill_mid_export_keeps_the_last_export_and_the_next_one_sweeps_up(
        cli, cli_runner, pretrain_run, tmp_path):
    """SIGKILL while ``export --overwrite`` writes: the earlier export is intact and loads, and
    the model-sized temp folder the kill left beside it (in the user's folder) is removed by
    the next export instead of staying for good."""
    folder = tmp_path / "exports"
    out = folder / "tiny-hf"
    cli(["export", pretrain_run, "--to", "hf", out])
    before = tree_bytes(out)
    _kill_when(cli_runner, ["export", pretrain_run, "--to", "hf", out, "--overwrite"],
               ".tiny-hf.tmp-*", folder)
    assert tree_bytes(out) == before
    assert _temps(folder), "the kill came after the save; nothing was tested"
    cli(["export", pretrain_run, "--to", "hf", out, "--overwrite"])
    assert _temps(folder) == []
    again = tree_bytes(out)
    assert again.pop(".scratchllm") and before.pop(".scratchllm")  # it holds the time written
    assert again == before


# --------------------------------------------------------------------------- evaluate judge

class _SlowJudge:
    """An Ollama stand-in on 127.0.0.1 that thinks ``delay`` seconds per request and gives
    every answer 70; ``stop()`` takes it down as a crashed judge goes (connections refused)."""

    def __init__(self, delay: float = 0.1) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        judge = self
        self.delay, self.asked = delay, 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers["Content-Length"]))
                judge.asked += 1
                time.sleep(judge.delay)
                body = json.dumps({"message": {"role": "assistant", "content": "Score: 70"}})
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body.encode())
                except OSError:
                    pass  # the client hung up (it was stopped)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def slow_judge():
    judge = _SlowJudge()
    yield judge
    judge.stop()


@pytest.fixture
def forty_answers(tmp_path) -> Path:
    import json

    path = tmp_path / "test_responses.json"
    path.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": str(i),
                                 "model_response": str(i)} for i in range(40)]))
    return path


def _judged(items: Path) -> list[int]:
    """The indexes in the per-item log; every line must be whole JSON (none cut mid-line)."""
    import json

    text = items.read_text(encoding="utf-8")
    assert text.endswith("\n"), text[-200:]
    return [json.loads(line)["index"] for line in text.splitlines()]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_judge_stopped_mid_run_keeps_whole_items_and_resume_asks_only_the_rest(
        cli, cli_runner, slow_judge, forty_answers, tmp_path, signum):
    """Ctrl-C or SIGTERM while 4 requests are in flight: exit 130/143 at once (SIGTERM used to
    be swallowed inside asyncio/anyio now and then: all 40 items judged, then exit 143 with no
    scores file) with one line saying what is kept and to continue with --resume (it said
    only "interrupted", and a rerun without --resume judges everything again); the per-item
    log whole lines only, no scores file yet; ``--resume`` asks only about the rest."""
    out = tmp_path / "scores.json"
    items = out.with_suffix(".jsonl")
    argv = ["evaluate", "judge", "--responses", forty_answers, "--endpoint", slow_judge.url,
            "--workers", "4", "--out", out]
    started = cli_runner.start(argv)
    _wait_for(lambda: items.is_file() and items.read_bytes().count(b"\n") >= 5,
              started, cli_runner)
    cli_runner.signal(started, signum)
    done = cli_runner.finish(started, timeout=30)
    assert done.returncode == 128 + signum, done.stderr
    word = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    assert "Traceback" not in done.stderr and done.stdout == ""
    kept = _judged(items)
    said = [line for line in done.stderr.splitlines() if "judge: item" not in line]
    assert said == [f"{word} after {len(kept)} of 40 items; kept in {items}; "
                    "continue with --resume"], done.stderr
    assert 5 <= len(kept) <= 5 + 4 + 2 and len(set(kept)) == len(kept), kept  # stopped at once
    assert not out.exists()
    asked = slow_judge.asked
    proc = cli([*argv, "--resume"])
    assert slow_judge.asked - asked == 40 - len(kept)
    assert sorted(_judged(items)) == list(range(40))
    assert "average score: 70.00 / 100 over 40 responses" in proc.stdout


def test_a_judge_that_dies_mid_run_is_one_line_and_resume_goes_on_elsewhere(
        cli, cli_runner, slow_judge, forty_answers, tmp_path):
    """The judge server goes away mid-run: one line saying how many items are kept and to
    add --resume (not a traceback, not a hang); resuming against another judge server of
    the same model asks it only about the rest."""
    out = tmp_path / "scores.json"
    items = out.with_suffix(".jsonl")
    argv = ["evaluate", "judge", "--responses", forty_answers, "--workers", "2", "--out", out,
            "--retries", "1"]
    started = cli_runner.start([*argv, "--endpoint", slow_judge.url])
    _wait_for(lambda: items.is_file() and items.read_bytes().count(b"\n") >= 5,
              started, cli_runner)
    slow_judge.stop()
    done = cli_runner.finish(started, timeout=60)
    assert done.returncode == 2, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("scratchllm evaluate: error: ") and "Traceback" not in done.stderr
    kept = _judged(items)
    assert f"the {len(kept)} items judged so far are kept in {items}" in last, last
    assert "add --resume" in last and not out.exists()
    other = _SlowJudge(delay=0)
    try:
        cli([*argv, "--endpoint", other.url, "--resume"])
    finally:
        other.stop()
    assert other.asked == 40 - len(kept)
    assert sorted(_judged(items)) == list(range(40))


# --------------------------------------------------------------------------- chat

@pytest.fixture(scope="module")
def chatty_model(e2e_root) -> Path:
    """A random model with GPT-2's 50,257 tokens: it all but never picks the end token, so
    an answer runs its full --max-new-tokens and is still streaming when the signal comes."""
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel
    from scratchllm.tokenizers.gpt2 import GPT2Tokenizer
    from scratchllm.weights.model_dir import save_model_dir

    import torch

    torch.manual_seed(0)
    out = e2e_root / "interrupts" / "chatty"
    save_model_dir(out, GPTModel(GPTConfig.preset("tiny", context_length=1024)), GPT2Tokenizer())
    return out


def _streaming(started, bytes_out: int = 20):
    """A condition: the answer has begun on stdout (after the banner, which goes to stderr)."""
    out = Path(started[2]["stdout"])
    return lambda: out.is_file() and out.stat().st_size >= bytes_out


def test_chat_sigterm_mid_answer_ends_the_answer_line_then_one_line(cli_runner, chatty_model):
    """SIGTERM while an answer streams: exit 143; the cut answer's line is ended, so the
    reason is a line of its own (it used to run on after the answer's last word)."""
    started = cli_runner.start(["chat", "--model", chatty_model, "--max-new-tokens", "900",
                                "--device", "cpu"], stdin="Hello\n/quit\n")
    _wait_for(_streaming(started), started, cli_runner)
    cli_runner.signal(started, signal.SIGTERM)
    done = cli_runner.finish(started, timeout=30)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stdout.endswith("\n") and done.stdout.count("\n") == 1, done.stdout[-200:]
    assert done.stderr.splitlines()[-1] == "scratchllm chat: stopped by SIGTERM"
    assert "Traceback" not in done.stderr


def test_chat_ctrl_c_mid_answer_keeps_the_chat_and_end_of_input_ends_it(cli_runner,
                                                                         chatty_model):
    """Ctrl-C stops only the answer (a note on stderr, the cut answer's line ended); the
    next message is answered in full, and the end of input ends the chat with exit 0."""
    started = cli_runner.start(["chat", "--model", chatty_model, "--max-new-tokens", "60",
                                "--device", "cpu"], stdin="Hello\nAgain\n")
    _wait_for(_streaming(started, 2), started, cli_runner)
    cli_runner.signal(started, signal.SIGINT)
    done = cli_runner.finish(started, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("[answer stopped; kept in the history as cut]") == 1, done.stderr
    cut, full = done.stdout.split("\n")[:2]
    assert done.stdout == f"{cut}\n{full}\n" and len(full) > len(cut)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_chat_signalled_at_a_terminal_prompt_leaves_the_terminal_as_it_was(cli_runner,
                                                                          chatty_model, signum):
    """``chat`` on a real terminal (a pty: readline is on) and SIGTERM at the ``> `` prompt:
    exit 143, the terminal's modes as before (echo and line editing back), and the reason on
    its own line, not after ``> ``. Ctrl-C there ends the chat quietly: exit 0, a newline."""
    import pty
    import select
    import sys
    import termios

    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", "chat", "--model",
                             chatty_model, "--device", "cpu"], stdin=slave, stdout=slave,
                            stderr=slave, env=cli_runner.env, cwd=cli_runner.cwd)
    shown = b""

    def read(seconds: float) -> None:
        nonlocal shown
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([master], [], [], 0.02)[0]:
                try:
                    shown += os.read(master, 65536)
                except OSError:  # the child closed its side
                    return

    try:
        deadline = time.monotonic() + 60
        while not shown.endswith(b"> ") and proc.poll() is None:
            assert time.monotonic() < deadline, shown
            read(0.05)
        proc.send_signal(signum)
        assert proc.wait(30) == (0 if signum == signal.SIGINT else 128 + signum), shown
        read(0.2)
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
    text = shown.decode("utf-8", "replace")
    reason = "" if signum == signal.SIGINT else "scratchllm chat: stopped by SIGTERM\r\n"
    assert text.endswith("> \r\n" + reason), text[-300:]
    assert "Traceback" not in text


# --------------------------------------------------------------------------- serve

@pytest.mark.parametrize("second", [None, signal.SIGINT], ids=["drain-deadline", "ctrl-c-again"])
def test_serve_sigterm_mid_stream_cuts_it_at_the_deadline_and_exits(cli_runner, chatty_model,
                                                                    second):
    """SIGTERM while a 1000-token stream runs: past --drain-timeout (or at a Ctrl-C that
    follows the SIGTERM: force quit) the server closes the stream, which the client sees as
    a cut body, not a hang, and exits 0 at once; the cancelled request is no traceback in
    the log (uvicorn printed a CancelledError traceback per cut request, and for the app's
    lifespan on a force quit)."""
    import httpx

    from e2e_support import start_serve

    drain = "0.5" if second is None else "30"
    server, base = start_serve(cli_runner, ["--model", chatty_model, "--device", "cpu",
                                            "--max-batch", "2", "--drain-timeout", drain])
    events, outcome = 0, None
    try:
        with httpx.stream("POST", f"{base}/v1/completions", trust_env=False, timeout=60,
                          json={"prompt": "Once", "max_tokens": 1000, "temperature": 0,
                                "stream": True}) as response:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue  # the blank line after each event
                events += 1
                if events == 3:
                    cli_runner.signal(server, signal.SIGTERM)
                    signalled = time.monotonic()
                    if second is not None:
                        time.sleep(0.2)
                        cli_runner.signal(server, second)
                assert line != "data: [DONE]", "the stream finished before the deadline"
    except httpx.RemoteProtocolError as err:  # the body ended mid-chunk: the cut
        outcome = err
    finally:
        done = cli_runner.finish(server, timeout=60)
    assert outcome is not None and 3 <= events < 1000
    assert time.monotonic() - signalled < float(drain) + 10
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "CancelledError" not in done.stderr, done.stderr


# --------------------------------------------------------------------------- SIGKILL mid-checkpoint

_REWARD_FN = "def score(prompt: str, response: str) -> float:\n    return float(len(response))\n"
_SAVES = ["--device", "cpu", "--precision", "fp32", "--save-every", "1"]  # (classify: no --quiet)
_RL = ["--max-steps", "3", "--rollout-batch", "2", "--minibatch", "2", "--ppo-epochs", "1",
       "--max-new-tokens", "4", "--lr", "1e-3", "--quiet", *_SAVES]
_KILLED_SAVES = {
    "classify": lambda d: ["finetune", "classify", "--model", d["model"], "--data", d["spam"],
                           "--epochs", "1", "--batch-size", "8", "--trainable", "all",
                           "--lr", "1e-3", "--seed", "5", *_SAVES],
    "dpo": lambda d: ["finetune", "dpo", "--model", d["model"], "--data", d["prefs"],
                      "--batch-size", "4", "--max-length", "96", "--lr", "1e-3",
                      "--no-test-responses", "--quiet", *_SAVES],
    "reward": lambda d: ["finetune", "reward", "--model", d["model"], "--data", d["prefs"],
                         "--batch-size", "4", "--seed", "5", "--quiet", *_SAVES],
    "ppo": lambda d: ["finetune", "ppo", "--policy", d["model"], "--reward-fn",
                      f"{d['reward']}:score", "--prompts", d["prompts"], *_RL],
    "grpo": lambda d: ["finetune", "ppo", "--policy", d["model"], "--reward-fn",
                       f"{d['reward']}:score", "--prompts", d["prompts"], "--algorithm", "grpo",
                       "--group-size", "2", *_RL],
}


@pytest.mark.parametrize("command", list(_KILLED_SAVES))
def test_sigkill_mid_checkpoint_keeps_the_last_one_and_resume_finishes_as_if_never_killed(
        cli, cli_runner, chatty_model, spam_file, preference_file, instruct_file, tmp_path,
        command):
    """SIGKILL (nothing can clean up) the moment step 2's checkpoint folder starts being
    written: LATEST, latest/ and step 1 stay whole and load; ``--resume`` continues from step
    1, sweeps the killed save's temp folder, and logs exactly what an uninterrupted run logs;
    the finished OUT opens with ``open_model`` (a classifier or reward model: with the loader
    ``classify`` / ``evaluate reward`` use; a stopped run's checkpoints lacked the labels or
    reward metadata, so neither loader nor ``open_model`` read them)."""
    import json

    from scratchllm.finetune.classifier_model import load_classifier
    from scratchllm.finetune.reward_model import load_reward_model
    from scratchllm.weights.auto import open_model

    opens = {"classify": load_classifier, "reward": load_reward_model}.get(command, open_model)
    reward = tmp_path / "reward.py"
    reward.write_text(_REWARD_FN)
    args = _KILLED_SAVES[command]({"model": chatty_model, "spam": spam_file, "reward": reward,
                                   "prefs": preference_file, "prompts": instruct_file})
    straight, run = tmp_path / "straight", tmp_path / "run"
    cli([*args, "--out", straight])
    _kill_when(cli_runner, [*args, "--out", run], ".step-00000002.tmp-*", run / "checkpoints")
    checkpoints = run / "checkpoints"
    assert _temps(checkpoints), "the kill came after the save; nothing was tested"
    assert not (checkpoints / "step-00000002").exists()
    assert (run / "LATEST").read_text().strip() == "step-00000001"
    for model in (checkpoints / "step-00000001", run / "latest"):
        assert json.loads((model / "config.json").read_text())["metadata"]["step"] == 1
        assert opens(model)
    assert opens(run)  # a run folder opens as its latest/
    cli([*args, "--out", run, "--resume"])
    assert _temps(checkpoints) == [] and _temps(run) == []
    assert _records(run) == _records(straight)
    assert opens(run)


def test_serve_answers_503_to_a_request_cut_at_the_drain_deadline(cli_runner, chatty_model):
    """A non-streamed request still decoding (and one still queued behind it) when the
    SIGTERM drain deadline passes gets HTTP 503 saying the server shut down, not uvicorn's
    bare "500 Internal Server Error", which reads as a bug in the server."""
    import threading

    import httpx

    from e2e_support import start_serve

    server, base = start_serve(cli_runner, ["--model", chatty_model, "--device", "cpu",
                                            "--max-batch", "1", "--drain-timeout", "0.3"])
    answers: dict[str, httpx.Response] = {}

    def ask(name: str) -> None:
        answers[name] = httpx.post(f"{base}/v1/completions", trust_env=False, timeout=60,
                                   json={"prompt": "Once", "max_tokens": 1000})

    clients = [threading.Thread(target=ask, args=(name,)) for name in ("running", "queued")]
    try:
        for client in clients:
            client.start()
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/health", trust_env=False).json()["queued"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cli_runner.signal(server, signal.SIGTERM)
        for client in clients:
            client.join(30)
    finally:
        done = cli_runner.finish(server, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    for name, answer in answers.items():
        assert answer.status_code == 503, (name, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "server_shutting_down" and "--drain-timeout" in error["message"]
