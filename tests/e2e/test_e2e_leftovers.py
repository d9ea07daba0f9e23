"""Journeys the last audit left open: a prepare killed mid-write, a GGUF export's file name,
and resuming a finished fine-tune with more epochs."""

from __future__ import annotations

import signal
import time

import pytest

from e2e_support import corpus_text, tree_bytes

pytestmark = pytest.mark.slow


def _temps(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_sigkill_mid_prepare_keeps_the_old_set_and_pretrain_reads_it(cli, cli_runner,
                                                                      corpus_file, tmp_path):
    """``prepare --overwrite`` SIGKILLed while it writes the new set (nothing can clean up):
    the old four files are byte-identical, ``pretrain`` trains on them, and the next prepare
    removes the killed one's temp folder and succeeds (was: files swapped one by one, so a
    kill between two swaps left a mixed set that pretrain refused)."""
    out = tmp_path / "tokens"
    cli(["prepare", corpus_file, "--out", out, "--workers", "1"])
    before = tree_bytes(out)
    big = tmp_path / "big.txt"
    big.write_text(corpus_text() * 600, encoding="utf-8")  # a few MB: a second of work
    started = cli_runner.start(["prepare", big, "--out", out, "--overwrite", "--workers", "1",
                                "--chunk-kb", "64"])
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in tmp_path.glob(".tokens.tmp-*/*.bin")):
        assert time.monotonic() < deadline, "the new set never started"
        time.sleep(0.002)
    cli_runner.signal(started, signal.SIGKILL)
    assert cli_runner.finish(started, timeout=60).returncode == -signal.SIGKILL
    assert tree_bytes(out) == before
    assert _temps(tmp_path), "the kill came after the swap; nothing was tested"
    cli(["pretrain", "--data", out, "--preset", "tiny", "--max-steps", 1, "--out",
         tmp_path / "run", "--context-length", 32, "--batch-size", 2, "--eval-every", 1,
         "--set", "eval_batches=1", "--set", "sample_tokens=0", "--device", "cpu",
         "--precision", "fp32"])
    cli(["prepare", big, "--out", out, "--overwrite", "--workers", "1", "--chunk-kb", "64"])
    assert _temps(tmp_path) == [] and tree_bytes(out) != before


def test_export_gguf_to_a_name_without_the_suffix_is_one_line(cli_error, gpt2_hf_dir, tmp_path):
    """``export --to gguf out/sft``: exit 2, one line naming the fix (``out/sft.gguf``), and
    nothing written (was: a suffix-less file named ``sft`` that looked like a folder)."""
    out = tmp_path / "out" / "sft"
    line = cli_error(["export", gpt2_hf_dir, "--to", "gguf", out], "export")
    assert f"{out}.gguf" in line and "*.gguf" in line, line
    assert not (tmp_path / "out").exists()


def _weights(run):
    import safetensors.torch

    return safetensors.torch.load_file(str(run / "latest" / "model.safetensors"))


def test_finetune_resume_with_more_epochs_extends_the_finished_run(cli, cli_error, gpt2_hf_dir,
                                                                   instruct_file, tmp_path):
    """A finished one-epoch ``finetune instruct`` resumed with ``--epochs 2`` trains on to the
    end of epoch 2 and equals a two-epoch run (was: refused, 'the settings differ'); fewer
    epochs than done is one line saying how many."""
    import torch

    def argv(out, epochs):
        return ["finetune", "instruct", "--model", gpt2_hf_dir, "--data", instruct_file,
                "--out", out, "--epochs", epochs, "--batch-size", "4", "--max-length", "192",
                "--eval-every", "2", "--lr", "1e-3", "--device", "cpu", "--precision", "fp32",
                "--no-test-responses", "--save-every", "2"]

    run, straight = tmp_path / "run", tmp_path / "straight"
    cli(argv(straight, "2") + ["--quiet"])
    cli(argv(run, "1") + ["--quiet"])
    extended = cli(argv(run, "2") + ["--resume"])
    assert "--epochs 1 -> 2: continuing to step 8" in extended.stderr, extended.stderr
    a, b = _weights(straight), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    line = cli_error(argv(run, "1") + ["--resume"], "finetune")
    assert "at step 8" in line and "--epochs 2 or more" in line, line
