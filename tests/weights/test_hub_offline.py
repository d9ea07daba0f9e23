"""Downloads, offline only: no test touches the network."""

from __future__ import annotations

import pytest

import scratchllm
from scratchllm.cli.main import main
from scratchllm.errors import MissingFileError
from scratchllm.weights.hub import download, is_hub_name, resolve_hub_name


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    cache = tmp_path / "cache"
    cache.mkdir()
    return cache


def test_short_names_map_to_openai_community_repos():
    assert resolve_hub_name("gpt2") == "openai-community/gpt2"
    assert resolve_hub_name("GPT2-XL") == "openai-community/gpt2-xl"
    assert resolve_hub_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    assert is_hub_name("gpt2-medium") and is_hub_name("meta-llama/Llama-3.2-1B")
    assert not is_hub_name("a/b/c") and not is_hub_name("plainword")


def test_offline_download_fails_at_once_with_manual_instructions(offline):
    with pytest.raises(MissingFileError) as info:
        download("gpt2-medium", cache_dir=offline)
    message = str(info.value)
    for needed in ("openai-community/gpt2-medium", "HF_HUB_OFFLINE", "config.json",
                   "model.safetensors", "vocab.json", "merges.txt", str(offline)):
        assert needed in message


def test_cli_download_offline_is_one_error_line(offline, capsys):
    assert main(["download", "gpt2", "--dir", str(offline)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scratchllm download: error: cannot download openai-community/gpt2")
    assert len(err.splitlines()) == 1


def test_load_by_hub_name_offline_explains_how_to_place_files(offline):
    with pytest.raises(MissingFileError, match="huggingface.co/openai-community/gpt2"):
        scratchllm.load("gpt2")


def test_a_mistyped_local_path_is_not_sent_to_the_hub(offline, tmp_path, monkeypatch):
    """`--model runs/mine-typo` while ./runs exists is a local path with a typo, not the Hub
    repo 'runs/mine-typo': say the folder is missing instead of explaining downloads."""
    from scratchllm.weights.auto import resolve_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert not is_hub_name("runs/mine-typo") and is_hub_name("owner/repo")
    with pytest.raises(MissingFileError, match="runs/mine-typo does not exist") as info:
        resolve_source("runs/mine-typo")
    # and it says why it was not taken for a Hub name, and how to get that model if it was one
    assert "./runs is a folder here" in str(info.value)
    assert "scratchllm download runs/mine-typo" in str(info.value)


def test_manual_instructions_without_a_cache_dir_read_plainly(offline):
    with pytest.raises(MissingFileError) as info:
        download("owner/repo")
    assert "in any directory" not in str(info.value)
    assert "into one directory, then pass that directory's path" in str(info.value)
