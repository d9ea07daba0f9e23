"""SIGTERM (what schedulers, ``kill`` and ``docker stop`` send) saves like Ctrl-C: a real
``python -m scratchllm pretrain`` process is terminated mid-run, exits 143, and --resume
finishes with the weights of a run that was never stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import pytest
import safetensors.torch
import torch

from scratchllm.cli import main as cli_main
from scratchllm.train.state import latest_checkpoint, read_trainer_record

# One torch thread, as the in-process runs of this folder use (tests/train/conftest.py).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STEPS = 80  # enough that the run is still going when the signal lands


@pytest.fixture(autouse=True)
def _only_pretrain(monkeypatch):
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["scratchllm.cli.pretrain"])


def _weights(run) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run / "latest" / "model.safetensors"))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_saves_exits_143_and_resume_is_exact(tmp_path, llama_args, capsys):
    run = tmp_path / "run"
    args = llama_args(run, "--max-steps", str(STEPS), "--save-every", "0", "--eval-every", "100")
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    timer = threading.Timer(300, proc.kill)  # a hung child must not hang the suite
    timer.start()
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if re.match(rf"step\s+\d+/{STEPS} \|", line):  # the first progress line
                proc.send_signal(signal.SIGTERM)
                break
        rest_out, rest_err = proc.communicate()
    finally:
        timer.cancel()
    err = "".join(seen) + rest_err
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert re.search(r"stopped by SIGTERM at step \d+; saved .*continue with --resume", err), err
    stopped = latest_checkpoint(run)
    step = read_trainer_record(stopped)["state"]["step"]
    assert 1 <= step < STEPS and stopped.name == f"step-{step:08d}"

    assert cli_main.main([*args, "--resume"]) == 0
    assert f"resumed from {stopped} at step {step}" in capsys.readouterr().err
    straight = tmp_path / "straight"
    assert cli_main.main(llama_args(straight, "--max-steps", str(STEPS), "--save-every", "0",
                                    "--eval-every", "100")) == 0
    resumed, reference = _weights(run), _weights(straight)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in resumed)
