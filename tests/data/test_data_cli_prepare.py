"""`scratchllm prepare` end to end through the real entry point."""

from __future__ import annotations

import numpy as np
import pytest
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from scratchllm.cli.main import main
from scratchllm.data import TokenShard


@pytest.fixture(scope="module")
def reference(shared_data) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding built from the shared vocab files (independent of our code)."""
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(shared_data / "gpt2" / "vocab.bpe"),
        encoder_json_file=str(shared_data / "gpt2" / "encoder.json"),
    )
    return tiktoken.Encoding("gpt2-reference", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def test_prepare_command_end_to_end(tmp_path, shared_data, reference, capsys):
    extra = tmp_path / "extra.txt"
    extra.write_text("One more short document.\n")
    verdict = shared_data / "the-verdict.txt"
    out = tmp_path / "tokens"
    code = main(["prepare", str(verdict), str(extra), "--out", str(out), "--val-fraction", "0",
                 "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 0
    expected = (reference.encode_ordinary(verdict.read_text()) + [50256]
                + reference.encode_ordinary(extra.read_text()) + [50256])
    assert np.fromfile(out / "train.bin", dtype="<u2").tolist() == expected
    assert len(expected) == 5145 + 1 + 6 + 1  # book: 5145; extra doc: 6
    assert f"train.bin: {len(expected):,} tokens" in captured.out
    assert "MB/s" in captured.err and "2 files" in captured.err


def test_prepare_command_with_val_split(tmp_path, shared_data, capsys):
    out = tmp_path / "tokens"
    assert main(["prepare", str(shared_data / "the-verdict.txt"), "--out", str(out)]) == 0
    train, val = TokenShard(out / "train.bin"), TokenShard(out / "val.bin")
    assert len(train) > len(val) > 0
    assert f"val.bin:   {len(val):,} tokens" in capsys.readouterr().out


def test_missing_input_is_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert main(["prepare", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scratchllm prepare: error:" in err and str(missing) in err
    assert "Traceback" not in err


def test_bad_val_fraction_exit_2(tmp_path, shared_data, capsys):
    args = ["prepare", str(shared_data / "the-verdict.txt"), "--out", str(tmp_path / "o")]
    assert main(args + ["--val-fraction", "1.5"]) == 2
    assert "val_fraction" in capsys.readouterr().err
