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
