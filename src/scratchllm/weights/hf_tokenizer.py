"""The tokenizer of a Hugging Face model directory, whichever files it ships.

OpenAI's own GPT-2 vocabulary becomes our tiktoken-backed ``GPT2Tokenizer`` (fastest); a
``tokenizer.json`` becomes ``HFTokenizer``; a ``vocab.json`` + ``merges.txt`` pair of another
byte-level BPE becomes an ``HFTokenizer`` built from those two files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scratchllm.utils.json_files import read_json_object


def load_hf_tokenizer(directory: Path, hf_config: dict[str, Any] | None = None) -> Any:
    """The directory's tokenizer, or None when it has no tokenizer files.

    OpenAI's own GPT-2 vocabulary -> our tiktoken-backed GPT2Tokenizer (fastest); any
    tokenizer.json -> HFTokenizer; a vocab.json + merges.txt pair of another byte-level BPE
    (a GPT-2 trained on other text) -> HFTokenizer built from those two files.
    """
    from scratchllm.tokenizers.hf import HFTokenizer

    if (hf_config or {}).get("model_type") == "gpt2" and _is_standard_gpt2_vocab(directory):
        from scratchllm.tokenizers.gpt2 import GPT2Tokenizer
        return GPT2Tokenizer()
    if (directory / "tokenizer.json").is_file():
        return HFTokenizer.from_dir(directory)
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return byte_level_bpe_tokenizer(directory)
    return None


def byte_level_bpe_tokenizer(directory: Path) -> Any:
    """A GPT-2-style tokenizer from vocab.json + merges.txt (+ tokenizer_config.json)."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    from scratchllm.errors import TokenizerError
    from scratchllm.tokenizers.hf import HFTokenizer, _token_text

    config: dict[str, Any] = {}
    if (directory / "tokenizer_config.json").is_file():
        config = read_json_object(directory / "tokenizer_config.json", fix="download it again")
    try:
        bpe = models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    except Exception as err:  # the Rust side raises a plain Exception
        raise TokenizerError(f"{directory}: vocab.json/merges.txt are not a valid BPE "
                             f"vocabulary ({err}); download them again") from err
    backend = tokenizers.Tokenizer(bpe)
    prefix = bool(config.get("add_prefix_space", False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    backend.decoder = decoders.ByteLevel()
    specials = {_token_text(config.get(k)) for k in ("eos_token", "bos_token", "unk_token",
                                                      "pad_token")}
    added = config.get("added_tokens_decoder")
    if isinstance(added, dict):
        specials |= {_token_text(v) for v in added.values()}
    vocab = backend.get_vocab()
    specials = sorted(t for t in specials if t and t in vocab)
    if not specials and "<|endoftext|>" in vocab:
        specials = ["<|endoftext|>"]
    backend.add_special_tokens(specials)
    return HFTokenizer(backend, config)


def _is_standard_gpt2_vocab(directory: Path) -> bool:
    """True when vocab.json + merges.txt are exactly OpenAI's GPT-2 encoder.json + vocab.bpe."""
    from scratchllm.tokenizers.byte_level import find_gpt2_files

    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        return False
    try:
        ours = find_gpt2_files()
    except Exception:
        return False
    if ours is None:
        return False
    try:
        same_vocab = json.loads(vocab.read_text("utf-8")) == json.loads(ours[0].read_text("utf-8"))
        lines = [line for line in merges.read_text("utf-8").splitlines() if line.strip()]
        ref = [line for line in ours[1].read_text("utf-8").splitlines() if line.strip()]
        return same_vocab and lines[1:] == ref[1:]  # line 0 is a "#version" header
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
