"""`scratchllm pretrain --out` follows the output-folder rules: it resumes or replaces only its
own runs, never deletes the user's files, and recognises runs written before markers existed.
Also: latest/ and best/ carry every file of the model directory (tokenizer files, marker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import scratchllm
from scratchllm.cli import main as cli_main
from scratchllm.utils.outputs import MARKER


@pytest.fixture(autouse=True)
def _only_pretrain(monkeypatch):
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["scratchllm.cli.pretrain"])


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # refused before any training output
    assert lines[0].startswith("scratchllm pretrain: error: ")
    return lines[0]


@pytest.fixture
def our_run(tmp_path, llama_args, capsys) -> Path:
    run = tmp_path / "run"
    assert cli_main.main(llama_args(run, "--max-steps", "3")) == 0
    capsys.readouterr()
    return run


def test_latest_and_best_hold_every_model_file(our_run, hf_tokenizer_file):
    ckpt = our_run / "checkpoints" / "step-00000003"
    files = {p.name for p in ckpt.iterdir() if p.is_file()}
    assert files == {"config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", MARKER}
    for name in ("latest", "best"):
        folder = our_run / name
        assert {p.name for p in folder.iterdir()} == files  # no trainer_state/
        assert all((folder / f).samefile(ckpt / f) for f in files)  # hard links, no copies
        model, tokenizer = scratchllm.load(folder)
        text = "Every effort moves you"
        assert tokenizer.decode(tokenizer.encode(text)) == text
        assert tokenizer.vocab_size == 300 and model.config.vocab_size == 1000


def test_resume_with_checkpoints_gone_deletes_nothing(our_run, llama_args, capsys):
    for path in sorted((our_run / "checkpoints").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (our_run / "checkpoints").rmdir()
    before = _snapshot(our_run)
    assert "best" in before and "latest" in before
    assert cli_main.main([*llama_args(our_run), "--resume"]) == 2
    line = _error_line(capsys)
    assert "no checkpoint to resume from" in line and "nothing was deleted" in line
    assert _snapshot(our_run) == before


def test_out_is_a_users_folder(tmp_path, llama_args, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    before = _snapshot(mine)
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert cli_main.main([*llama_args(mine), *extra]) == 2
        assert "not written by scratchllm" in _error_line(capsys)
        assert _snapshot(mine) == before


def test_overwrite_keeps_the_users_notes(our_run, llama_args, capsys):
    (our_run / "notes.txt").write_text("lr 1e-3 looked good")
    before = _snapshot(our_run)
    assert cli_main.main([*llama_args(our_run), "--overwrite"]) == 2
    line = _error_line(capsys)
    assert "notes.txt" in line and "never deletes" in line
    assert _snapshot(our_run) == before


def test_overwrite_replaces_our_run(our_run, llama_args, capsys):
    assert cli_main.main(llama_args(our_run, "--max-steps", "2")) == 2  # no flag: refused
    assert "--overwrite" in _error_line(capsys)
    assert cli_main.main([*llama_args(our_run, "--max-steps", "2", "--save-every", "0"),
                          "--overwrite"]) == 0
    assert sorted(p.name for p in (our_run / "checkpoints").iterdir()) == ["step-00000002"]
    records = [json.loads(line) for line in (our_run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 2
    assert json.loads((our_run / MARKER).read_text())["kind"] == "pretrain"


def _strip_markers(run: Path) -> None:
    """Make ``run`` look like a run written before scratchllm wrote markers."""
    for marker in run.rglob(MARKER):
        marker.unlink()
    assert (run / "LATEST").is_file() and (run / "checkpoints").is_dir()


def test_legacy_run_resumes_and_is_marked(our_run, llama_args, capsys):
    _strip_markers(our_run)
    assert cli_main.main([*llama_args(our_run, "--max-steps", "5"), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert (our_run / "LATEST").read_text().strip() == "step-00000005"
    assert json.loads((our_run / MARKER).read_text())["kind"] == "pretrain"


def test_legacy_run_is_replaced_with_overwrite(our_run, llama_args, capsys):
    _strip_markers(our_run)
    assert cli_main.main(llama_args(our_run)) == 2
    assert "--overwrite" in _error_line(capsys)
    assert cli_main.main([*llama_args(our_run, "--max-steps", "2", "--save-every", "0"),
                          "--overwrite"]) == 0
    assert sorted(p.name for p in (our_run / "checkpoints").iterdir()) == ["step-00000002"]
