"""`scratchllm download` leaves huggingface_hub's own progress bars on (no network touched)."""

from __future__ import annotations

import os

import huggingface_hub
import pytest
from huggingface_hub.utils import are_progress_bars_disabled

from scratchllm.cli.main import main


@pytest.mark.skipif(bool(os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")),
                    reason="the user switched huggingface_hub's bars off in the environment")
def test_download_keeps_huggingface_hub_progress_bars(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not cached")  # what the cache lookup sees first
        calls.append((kwargs, are_progress_bars_disabled()))
        (tmp_path / "snap").mkdir()
        (tmp_path / "snap" / "config.json").write_text("{}")
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert main(["download", "owner/model", "--dir", str(tmp_path / "cache")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "snap")
    [(kwargs, disabled)] = calls
    assert disabled is False  # nothing we import or run turned the bars off
    assert "tqdm_class" not in kwargs  # huggingface_hub draws its own bars
