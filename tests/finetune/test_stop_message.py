"""Ctrl-C in ``finetune instruct`` and ``finetune ppo``: the user reads one line saying why the
run stopped, where it saved and how to go on, on stderr like pretraining's, with or without
``--quiet`` (it was said twice: the library's line on stderr and another wording on stdout)."""

from __future__ import annotations

import os
import re
import signal

import pytest

from rl_support import prompts_file, tiny_byte_model
from scratchllm.cli.main import main
from scratchllm.finetune.instruct import InstructTask

pytestmark = pytest.mark.usefixtures("one_thread")
STOP = re.compile(r"^interrupted at step 2; saved (\S+); continue with --resume$")


def _the_one_stop_line(captured, out_dir) -> None:
    said = [line for line in (captured.out + captured.err).splitlines()
            if "--resume" in line or "stopped" in line or "interrupted" in line]
    assert len(said) == 1, said
    match = STOP.match(said[0])
    assert match and said[0] in captured.err.splitlines(), said
    assert match.group(1) == str(out_dir / "checkpoints" / "step-00000002")
    assert os.path.isdir(match.group(1))


@pytest.mark.parametrize("quiet", [False, True], ids=["progress", "quiet"])
def test_finetune_ctrl_c_says_it_once(dropout_model_dir, instruct_file, tmp_path, monkeypatch,
                                      capsys, quiet):
    original, calls = InstructTask.loss_sum, []

    def interrupting(self, batch):
        calls.append(1)
        if len(calls) == 2:  # during step 2
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(InstructTask, "loss_sum", interrupting)
    out = tmp_path / "run"
    code = main(["finetune", "instruct", "--model", str(dropout_model_dir), "--data",
                 str(instruct_file), "--out", str(out), "--epochs", "1", "--batch-size", "4",
                 "--eval-every", "10", "--no-test-responses", "--device", "cpu"]
                + (["--quiet"] if quiet else []))
    assert code == 130
    _the_one_stop_line(capsys.readouterr(), out)


@pytest.mark.parametrize("quiet", [False, True], ids=["progress", "quiet"])
def test_ppo_ctrl_c_says_it_once(tmp_path, capsys, quiet):
    base, prompts = tiny_byte_model(tmp_path / "base"), prompts_file(tmp_path)
    reward = tmp_path / "reward.py"
    reward.write_text(  # a reward that presses Ctrl-C at the first answer of step 2
        "import os, signal\ncalls = []\n\n"
        "def score(prompt, response):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 5:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return 0.5\n", encoding="utf-8")
    out = tmp_path / "run"
    code = main(["finetune", "ppo", "--policy", str(base), "--reward-fn", f"{reward}:score",
                 "--prompts", str(prompts), "--out", str(out), "--max-steps", "4",
                 "--rollout-batch", "4", "--minibatch", "4", "--ppo-epochs", "1",
                 "--max-new-tokens", "8", "--prompt-style", "raw", "--device", "cpu",
                 "--precision", "fp32", "--no-test-responses"] + (["--quiet"] if quiet else []))
    assert code == 130
    _the_one_stop_line(capsys.readouterr(), out)


def test_classify_quiet_prints_no_progress(dropout_model_dir, toy_labels_file, tmp_path, capsys):
    """``finetune classify --quiet``, as the other finetune commands take it: no progress
    lines on stderr, the results still on stdout."""
    args = ["finetune", "classify", "--model", str(dropout_model_dir), "--data",
            str(toy_labels_file), "--epochs", "1", "--batch-size", "8", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "loud")]) == 0
    assert "step" in capsys.readouterr().err  # what --quiet is to hide
    assert main(args + ["--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "step" not in captured.err and captured.out.startswith("accuracy: ")
