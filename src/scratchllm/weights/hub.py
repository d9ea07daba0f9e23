"""Download pretrained checkpoints from the Hugging Face Hub (book 5.5, from the Hub instead of
OpenAI's TensorFlow files).

``huggingface_hub.snapshot_download`` does the work (resuming interrupted downloads, caching);
we fetch only safetensors weights, JSON configs and tokenizer files, never pickles. Offline
(``HF_HUB_OFFLINE=1`` or no connection) we fail at once and say how to place files by hand.
Its own tqdm progress bars are left on (``HF_HUB_DISABLE_PROGRESS_BARS=1`` hides them), so
this module needs no progress display of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from scratchllm.errors import MissingFileError

# Short names for the four GPT-2 releases (book 5.5).
HUB_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
ALLOW_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "merges.txt", "vocab.json",
                  "*.jinja"]


def resolve_hub_name(name: str) -> str:
    """'gpt2' -> 'openai-community/gpt2'; a REPO_ID ('owner/name') passes through."""
    return HUB_NAMES.get(name.lower(), name)


def is_hub_name(name: str) -> bool:
    """A short name we know, or something shaped like 'owner/name' that is not a local path
    (nor a mistyped one: 'runs/mine-typo' where a local folder ./runs exists)."""
    if name.lower() in HUB_NAMES:
        return True
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not Path(name).exists()
            and not Path(parts[0]).is_dir())


def _offline_help(repo_id: str, cache_dir: Path | None, reason: str) -> str:
    where = f" under {cache_dir}" if cache_dir else ""
    return (f"cannot download {repo_id} ({reason}). To install it by hand, copy config.json, "
            "the model.safetensors file(s) (plus model.safetensors.index.json if sharded) and "
            "the tokenizer files (tokenizer.json + tokenizer_config.json, or vocab.json + "
            f"merges.txt for GPT-2) from https://huggingface.co/{repo_id} into one directory"
            f"{where}, then pass that directory's path instead of the name "
            "(e.g. `scratchllm generate --model DIR` or scratchllm.load('DIR'))")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cached_snapshot(name: str, cache_dir: str | Path | None = None,
                    revision: str | None = None) -> Path | None:
    """The local snapshot directory of ``name`` if it was downloaded before, else None."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(resolve_hub_name(name), revision=revision,
                                 cache_dir=str(cache_dir) if cache_dir else None,
                                 allow_patterns=ALLOW_PATTERNS, local_files_only=True)
    except Exception:  # not cached (huggingface_hub raises several error types)
        return None
    return Path(path) if (Path(path) / "config.json").is_file() else None


def download(name: str, cache_dir: str | Path | None = None,
             revision: str | None = None) -> Path:
    """Fetch ``name`` (gpt2 | gpt2-medium | gpt2-large | gpt2-xl | REPO_ID); return its dir.

    Already-downloaded files are reused and interrupted downloads resume (huggingface_hub's
    cache). Raises MissingFileError with manual-install instructions when offline.
    """
    from huggingface_hub import snapshot_download

    repo_id = resolve_hub_name(name)
    cache = Path(cache_dir).expanduser() if cache_dir else None
    found = cached_snapshot(repo_id, cache, revision)
    if found is not None:
        return found
    if _offline():
        raise MissingFileError(_offline_help(repo_id, cache, "HF_HUB_OFFLINE is set and the "
                                             "model is not in the local cache"))
    try:
        path = snapshot_download(repo_id, revision=revision,
                                 cache_dir=str(cache) if cache else None,
                                 allow_patterns=ALLOW_PATTERNS)
    except Exception as err:  # connection, 404, auth: huggingface_hub has many error types
        raise MissingFileError(_offline_help(repo_id, cache, f"{type(err).__name__}: "
                                             f"{str(err).splitlines()[0] if str(err) else ''}")
                               ) from err
    return Path(path)
