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
from pathlib import Path

import pytest

from e2e_support import corpus_text, tree_bytes, wait_for_moment

pytestmark = pytest.mark.slow


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_sigterm_mid_prepare_keeps_the_earlier_output_and_no_temp_files(cli, cli_runner,
                                                                        corpus_file, tmp_path):
    """``prepare --overwrite`` stopped by SIGTERM while it writes: exit 143 with one line, the
    previous train.bin/val.bin and sidecars byte-identical, no temp folder (``.tokens.tmp-*``,
    where the new set is built) left beside it (the default SIGTERM left temp files as big as
    the corpus, never cleaned by a rerun)."""
    out = tmp_path / "tokens"
    cli(["prepare", corpus_file, "--out", out, "--workers", "1"])
    before = tree_bytes(out)
    big = tmp_path / "big.txt"
    big.write_text(corpus_text() * 1500, encoding="utf-8")  # ~9 MB: a few seconds of work
    started = cli_runner.start(["prepare", big, "--out", out, "--overwrite", "--workers", "1",
                                "--chunk-kb", "64"])
    # mid-run: the new train.bin, built in a temp folder beside OUT, has its first tokens
    wait_for_moment(lambda: any(p.stat().st_size > 0
                                for p in tmp_path.glob(".tokens.tmp-*/train.bin")),
                    started, cli_runner)
    cli_runner.signal(started, signal.SIGTERM)
    done = cli_runner.finish(started, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "scratchllm prepare: stopped by SIGTERM", done.stderr
    assert "Traceback" not in done.stderr
    assert _temps(out) == [] and _temps(tmp_path) == []
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
    wait_for_moment(lambda: any(where.glob(pattern)) if where.is_dir() else False, started,
                    cli_runner)
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


# A child that runs the CLI and SIGKILLs itself at the N-th model file safetensors starts to
# write into a folder named PREFIX*: a LoRA save is too quick to be caught by polling.
_KILL_AT_SAVE = """
import os, signal, sys
from pathlib import Path
import safetensors.torch
prefix, nth, seen = sys.argv[1], int(sys.argv[2]), [0]
save_file = safetensors.torch.save_file
def killing_save_file(tensors, filename, *args, **kwargs):
    if Path(filename).parent.name.startswith(prefix):
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return save_file(tensors, filename, *args, **kwargs)
safetensors.torch.save_file = killing_save_file
from scratchllm.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


_LORA_RUNS = {
    "instruct": lambda d: ["finetune", "instruct", "--model", d["model"], "--data",
                           d["prompts"], "--epochs", "1", "--batch-size", "4",
                           "--max-length", "96", "--lr", "1e-3", "--no-test-responses",
                           "--quiet", *_SAVES],
    "ppo": _KILLED_SAVES["ppo"],
}


@pytest.mark.parametrize("command, prefix, nth",
                         [("instruct", ".step-00000002.tmp-", 1),
                          ("instruct", ".latest.tmp-", 2), ("ppo", ".latest.tmp-", 2)],
                         ids=["instruct-checkpoint", "instruct-merged-latest",
                              "ppo-merged-latest"])
def test_sigkill_mid_lora_checkpoint_keeps_a_loadable_latest_and_resume_finishes(
        cli, cli_runner, chatty_model, instruct_file, tmp_path, command, prefix, nth):
    """A LoRA run (``--lora-rank``) SIGKILLed inside step 2's save, while it writes the
    checkpoint's weights or the merged model for latest/: OUT opens (latest/ is step 1's
    merged model; a kill after latest/ was linked to the LoRA-layout checkpoint left one no
    loader reads, so ``generate --model OUT`` failed), and ``--resume`` sweeps the temp
    folder and logs what an uninterrupted run logs."""
    import json
    import sys

    from scratchllm.model.lora import lora_layers
    from scratchllm.weights.auto import open_model

    reward = tmp_path / "reward.py"
    reward.write_text(_REWARD_FN)
    args = [*_LORA_RUNS[command]({"model": chatty_model, "prompts": instruct_file,
                                  "reward": reward}), "--lora-rank", "2"]
    straight, run = tmp_path / "straight", tmp_path / "run"
    cli([*args, "--out", straight])
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_SAVE, prefix, str(nth),
                             *map(str, args), "--out", str(run)], env=cli_runner.env,
                            cwd=cli_runner.cwd, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run / "checkpoints" / "step-00000001").is_dir()
    assert _temps(run) + _temps(run / "checkpoints"), "nothing was being written at the kill"
    assert json.loads((run / "latest" / "config.json").read_text())["metadata"]["step"] == 1
    assert not lora_layers(open_model(run, device="cpu").model)
    cli(["generate", "--model", run, "Hello", "--max-new-tokens", "2", "--device", "cpu"])
    cli([*args, "--out", run, "--resume"])
    assert _temps(run) == [] and _temps(run / "checkpoints") == []
    assert _records(run) == _records(straight)
    assert not lora_layers(open_model(run, device="cpu").model)
