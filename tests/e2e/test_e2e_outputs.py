"""Never lose a user's data: every command refuses output folders it may not replace."""

from __future__ import annotations

import shutil

import pytest

from e2e_support import copy_run, tree_bytes

pytestmark = pytest.mark.slow


def test_resume_after_checkpoints_were_deleted_keeps_best_and_latest(cli_error, pretrain_run,
                                                                     corpus_file, tmp_path):
    run = copy_run(pretrain_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    before = tree_bytes(run)
    line = cli_error(["pretrain", "--out", run, "--resume", "--data", corpus_file], "pretrain")
    assert "resume" in line
    assert (run / "best" / "model.safetensors").is_file()
    assert (run / "latest" / "model.safetensors").is_file()
    assert tree_bytes(run) == before


@pytest.fixture
def users_folder(tmp_path):
    """A folder of the user's own files, not written by scratchllm."""
    folder = tmp_path / "my-files"
    folder.mkdir()
    (folder / "config.json").write_text('{"mine": true}\n')
    (folder / "thesis.txt").write_text("three years of work\n")
    return folder


# One argv per command that writes a folder; OUT is the user's folder. Some pass --overwrite:
# that replaces only scratchllm's own outputs. (`finetune dpo` shares instruct's run setup.)
WRITERS = {
    "pretrain": lambda d, out: ["pretrain", "--data", d["corpus"], "--preset", "tiny",
                                "--max-steps", "1", "--out", out],
    "finetune classify": lambda d, out: ["finetune", "classify", "--model", d["model"],
                                         "--data", d["spam"], "--out", out, "--overwrite"],
    "finetune instruct": lambda d, out: ["finetune", "instruct", "--model", d["model"],
                                         "--data", d["instruct"], "--out", out],
    "prepare": lambda d, out: ["prepare", d["corpus"], "--out", out, "--workers", "1"],
    "export": lambda d, out: ["export", d["model"], "--to", "hf", out, "--overwrite"],
}


@pytest.mark.parametrize("command", list(WRITERS))
def test_out_pointing_at_a_users_folder_is_refused_untouched(
        command, cli_error, users_folder, gpt2_hf_dir, corpus_file, spam_file, instruct_file):
    data = {"corpus": corpus_file, "spam": spam_file, "instruct": instruct_file,
            "model": gpt2_hf_dir}
    before = tree_bytes(users_folder)
    line = cli_error(WRITERS[command](data, users_folder), command.split()[0])
    assert str(users_folder) in line
    # named as the user typed it: export's OUT is positional, the others take --out
    assert f"{'OUT' if command == 'export' else '--out'} {users_folder}" in line
    assert tree_bytes(users_folder) == before
    assert sorted(p.name for p in users_folder.iterdir()) == ["config.json", "thesis.txt"]
