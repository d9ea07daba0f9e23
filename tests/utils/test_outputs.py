"""The output-folder rules: scratchllm writes only where it may and deletes only what it wrote."""

from __future__ import annotations

import json

import pytest

from scratchllm.errors import ConfigError
from scratchllm.utils.outputs import (FINETUNE_RUN, HF_EXPORT, MARKER, MODEL, PRETRAIN_RUN,
                                      check_output_dir, owner_kind, prepare_output_dir)


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_new_and_empty_folders_are_claimed_and_marked(tmp_path):
    for target in (tmp_path / "a" / "b", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        folder, decision = prepare_output_dir(target, FINETUNE_RUN)
        assert decision == "new" and folder.is_dir()
        marker = json.loads((folder / MARKER).read_text())
        assert marker["kind"] == "finetune" and "metrics.jsonl" in marker["entries"]
        assert owner_kind(folder)[0] == "finetune"


def test_user_folder_is_refused_and_untouched(tmp_path):
    (tmp_path / "config.json").write_text('{"mine": true}')
    (tmp_path / "notes.txt").write_text("years of work")
    before = snapshot(tmp_path)
    for kind in (PRETRAIN_RUN, FINETUNE_RUN, HF_EXPORT, MODEL):
        for flags in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(ConfigError, match="not written by scratchllm"):
                prepare_output_dir(tmp_path, kind, **flags)
    assert snapshot(tmp_path) == before


def test_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_output_dir(tmp_path / "out", HF_EXPORT)


def test_marked_output_needs_overwrite_or_resume(tmp_path):
    folder, _ = prepare_output_dir(tmp_path / "run", PRETRAIN_RUN)
    (folder / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="--resume to continue it, --overwrite"):
        check_output_dir(folder, PRETRAIN_RUN)
    assert check_output_dir(folder, PRETRAIN_RUN, resume=True) == "resume"
    # resume keeps everything
    prepare_output_dir(folder, PRETRAIN_RUN, resume=True)
    assert (folder / "metrics.jsonl").read_text() == "{}\n"
    # another kind cannot resume it, only replace it
    with pytest.raises(ConfigError, match="already holds a scratchllm pretrain output"):
        check_output_dir(folder, FINETUNE_RUN, resume=True)
    _, decision = prepare_output_dir(folder, FINETUNE_RUN, overwrite=True)
    assert decision == "replace" and not (folder / "metrics.jsonl").exists()
    assert owner_kind(folder)[0] == "finetune"


def test_overwrite_never_deletes_foreign_entries(tmp_path):
    folder, _ = prepare_output_dir(tmp_path / "run", PRETRAIN_RUN)
    (folder / "checkpoints").mkdir()
    (folder / "loss.png").write_bytes(b"png")
    (folder / "my-notes.md").write_text("keep me")
    before = snapshot(folder)
    with pytest.raises(ConfigError, match=r"1 entry scratchllm did not write \(my-notes.md\)"):
        prepare_output_dir(folder, PRETRAIN_RUN, overwrite=True)
    assert snapshot(folder) == before


def test_overwrite_replaces_our_output_and_leftover_temps(tmp_path):
    folder, _ = prepare_output_dir(tmp_path / "x", HF_EXPORT)
    for name in ("config.json", "model-00001-of-00002.safetensors", ".model.tmp-abc"):
        (folder / name).write_text("old")
    _, decision = prepare_output_dir(folder, HF_EXPORT, overwrite=True)
    assert decision == "replace"
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]
    assert not list(tmp_path.glob(".x.old-*"))  # the old copy is gone too


def test_outputs_of_older_versions_are_recognised(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000003").mkdir(parents=True)
    (run / "LATEST").write_text("step-00000003\n")
    (run / "metrics.jsonl").write_text("")
    assert owner_kind(run)[0] == "pretrain"
    assert check_output_dir(run, PRETRAIN_RUN, resume=True) == "resume"
    assert check_output_dir(run, PRETRAIN_RUN, overwrite=True) == "replace"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"format": "scratchllm"}))
    (model / "model.safetensors").write_bytes(b"")
    assert owner_kind(model)[0] == "model"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert owner_kind(hf) == (None, ())


def test_a_failed_commit_leaves_no_temp_file_and_the_old_file(tmp_path, monkeypatch):
    import errno
    import os

    from scratchllm.utils import atomic

    target = tmp_path / "results.json"
    target.write_text("old")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic.atomic_write_text(target, "new")
    monkeypatch.setattr(atomic.os, "fsync", os.fsync)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_refusal_offers_resume_only_to_outputs_that_can_resume(tmp_path):
    from scratchllm.utils.outputs import PREPARED

    for kind in (PREPARED, HF_EXPORT):
        folder = tmp_path / kind.name
        prepare_output_dir(folder, kind)
        (folder / kind.entries[0]).write_text("x")
        with pytest.raises(ConfigError) as err:
            check_output_dir(folder, kind)
        assert "--overwrite" in str(err.value) and "--resume" not in str(err.value)
    folder = tmp_path / "run"
    prepare_output_dir(folder, PRETRAIN_RUN)
    (folder / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="--resume to continue it"):
        check_output_dir(folder, PRETRAIN_RUN)
    with pytest.raises(ConfigError) as refused:  # a run with no checkpoint to continue
        check_output_dir(folder, PRETRAIN_RUN, can_resume=False)
    assert "--overwrite" in str(refused.value) and "--resume" not in str(refused.value)
