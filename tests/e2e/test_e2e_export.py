"""``scratchllm export RUN --to hf OUT``: transformers loads the result with the same logits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import scratchllm
from e2e_support import tree_bytes

pytestmark = pytest.mark.slow


def test_exported_run_loads_in_transformers_with_the_same_logits(pretrain_run, exported_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours, tokenizer = scratchllm.load(pretrain_run)
    hf = AutoModelForCausalLM.from_pretrained(exported_run).eval()
    text = "I had always thought Jack Gisburn rather a cheap genius"
    ids = tokenizer.encode(text)
    assert AutoTokenizer.from_pretrained(exported_run)(text).input_ids == ids
    batch = torch.tensor([ids])
    with torch.no_grad():
        expected, got = ours(batch), hf(batch).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (exported_run / ".scratchllm").is_file()


def test_export_refuses_a_folder_with_the_users_config_json(cli_error, pretrain_run, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}\n')
    (out / "notes.txt").write_text("do not lose me\n")
    before = tree_bytes(out)
    line = cli_error(["export", pretrain_run, "--to", "hf", out], "export")
    assert "not written by scratchllm" in line
    assert tree_bytes(out) == before


def test_export_twice_needs_overwrite(cli, cli_error, pretrain_run, exported_run, tmp_path):
    out = Path(shutil.copytree(exported_run, tmp_path / "again"))  # an earlier export
    first = tree_bytes(out)
    line = cli_error(["export", pretrain_run / "latest", "--to", "hf", out], "export")
    assert "--overwrite" in line
    assert tree_bytes(out) == first
    cli(["export", pretrain_run / "latest", "--to", "hf", out, "--overwrite"])
    again = tree_bytes(out)
    assert again.keys() == first.keys()
    assert all(again[k] == first[k] for k in first if k != ".scratchllm")  # same model, rewritten
