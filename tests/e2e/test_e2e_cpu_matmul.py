"""``SCRATCHLLM_CPU_MATMUL`` (``model.cpu_matmul``) as a user sets it: a value it does not know
stops pretrain and generate with one line and exit 2, before anything is written; ``mkl`` and
``onednn`` both run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from e2e_support import PROMPT

pytestmark = pytest.mark.slow


def _run(argv: list, value: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCRATCHLLM_CPU_MATMUL": value, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "scratchllm", *map(str, argv)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_an_unknown_library_is_one_line_and_exit_2(tmp_path, gpt2_hf_dir):
    for argv in (["pretrain", "--max-steps", 1, "--out", tmp_path / "run"],
                 ["generate", "--model", gpt2_hf_dir, "--max-new-tokens", 2, PROMPT]):
        proc = _run(argv, "openblas", tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "SCRATCHLLM_CPU_MATMUL must be one of auto, onednn, mkl" \
            in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_both_libraries_generate_the_same_text(tmp_path, gpt2_hf_dir):
    texts = {}
    for value in ("mkl", "onednn"):
        proc = _run(["generate", "--model", gpt2_hf_dir, "--max-new-tokens", 8, PROMPT],
                    value, tmp_path)
        assert proc.returncode == 0, proc.stderr
        texts[value] = proc.stdout
    assert texts["mkl"] == texts["onednn"] and texts["mkl"].startswith(PROMPT)


def test_both_libraries_measure_the_same_perplexity(tmp_path, gpt2_hf_dir):
    """``evaluate perplexity`` runs plain ``nn.Linear`` forwards inside ``onednn_linears``."""
    import json

    text = tmp_path / "text.txt"
    text.write_text("Every effort moves you forward, one small step at a time. " * 20)
    losses = {}
    for value in ("mkl", "onednn"):
        proc = _run(["evaluate", "perplexity", "--model", gpt2_hf_dir, "--text", text, "--json"],
                    value, tmp_path)
        assert proc.returncode == 0, proc.stderr
        losses[value] = json.loads(proc.stdout.strip().splitlines()[-1])["loss"]
    assert losses["onednn"] == pytest.approx(losses["mkl"], rel=1e-5)
