"""A checkpoint that rank 0 fails to write stops every rank of a ``torchrun`` job (2 CPU
processes, Gloo) with a one-line error, instead of leaving them at the barrier or crashing
inside the collective library when rank 0's process goes away."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

RUN = dict(preset="tiny", model={"emb_dim": 32, "n_layers": 1, "n_heads": 2, "drop_rate": 0.0},
           context_length=32, max_steps=3, micro_batch_size=2, batch_size=8, lr=3e-3,
           warmup_steps=1, log_every=1, eval_every=4, eval_batches=1, save_every=2,
           sample_tokens=0, seed=1, device="cpu", precision="fp32")

# Rank 0's checkpoint writer fails with an I/O error; the job runs the real CLI otherwise.
SCRIPT = """
import os, sys
from scratchllm.cli.main import main
from scratchllm.train import run_files

def broken(*args, **kwargs):
    raise OSError(5, "simulated I/O error on rank 0")

if os.environ["RANK"] == "0":
    run_files.save_checkpoint = broken
sys.exit(main(["pretrain", "--config", sys.argv[1], "--out", sys.argv[2]]))
"""


def test_a_failed_save_on_rank_0_stops_every_rank_with_one_line(tmp_path: Path):
    config, script = tmp_path / "dist.yaml", tmp_path / "job.py"
    config.write_text(yaml.safe_dump(RUN))
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--tee=3", str(script), str(config), str(tmp_path / "run")],
        capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    rank1 = [line for line in out.splitlines() if line.startswith("[default1]")]
    assert any("scratchllm pretrain: error: rank 0 failed while saving the checkpoint of "
               "step 2" in line for line in rank1), out[-3000:]
    assert not any("Traceback" in line or "Connection closed" in line for line in rank1), \
        out[-3000:]
    assert "simulated I/O error on rank 0" in out  # rank 0 reports its own error
    assert not (tmp_path / "run" / "checkpoints" / "step-00000002").exists()
