"""Journeys the last audit left open: a GGUF export's file name, resuming a finished fine-tune
with more epochs, and one Ctrl-C message."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


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
