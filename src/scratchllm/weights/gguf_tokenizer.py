"""A scratchllm tokenizer as GGUF vocabulary metadata, the way llama.cpp's tokenizer reads it.

llama.cpp runs byte-level BPE itself ("tokenizer.ggml.model" = "gpt2"): it needs every token
string (GPT-2's printable-byte spelling), a type per token (normal, control for special
tokens, user-defined for added plain tokens, unused for padding rows), the ranked merges as
"left right" lines, and the *name* of the pre-tokenizer regex, because llama.cpp keeps its own
copy of each known regex rather than reading one from the file. So the pre-tokenizer is
recognised here by its pattern and refused when llama.cpp has no equivalent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from scratchllm.errors import ConfigError, TokenizerError

# llama.cpp's pre-tokenizer names (src/llama-vocab.cpp) and the Hugging Face split patterns
# they stand for. GPT-2's own pattern is ByteLevel's built-in regex (use_regex=true).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_PATTERNS = {LLAMA3_PATTERN: "llama-bpe", QWEN2_PATTERN: "qwen2"}
SUPPORTED_PRE = ("gpt-2", "llama-bpe", "qwen2")

# gguf.TokenType values (kept numeric so this module imports without gguf installed).
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass
class GGUFVocab:
    """Everything the tokenizer.ggml.* keys hold."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    add_bos: bool = False
    specials: dict[str, int] = field(default_factory=dict)


def gguf_vocab(tokenizer: Any, vocab_size: int) -> GGUFVocab:
    """The GGUF vocabulary of ``tokenizer``, padded with unused tokens to ``vocab_size`` rows
    (a model may have more embedding rows than its tokenizer has tokens, never fewer)."""
    from scratchllm.tokenizers.bpe import BPETokenizer
    from scratchllm.tokenizers.gpt2 import GPT2Tokenizer
    from scratchllm.tokenizers.hf import HFTokenizer

    if isinstance(tokenizer, GPT2Tokenizer):
        vocab, merges, specials, pre = _gpt2_parts(tokenizer)
        added: dict[int, bool] = {}
    elif isinstance(tokenizer, BPETokenizer):
        vocab, merges, specials, pre = _bpe_parts(tokenizer)
        added = {}
    elif isinstance(tokenizer, HFTokenizer):
        vocab, merges, pre, added = _hf_parts(tokenizer)
        specials = tokenizer.special_tokens
    else:
        raise TokenizerError(
            f"{type(tokenizer).__name__} cannot be written to GGUF; llama.cpp reads byte-level "
            "BPE tokenizers: GPT-2's, a scratchllm-trained BPE, or a tokenizer.json BPE")
    by_id = {i: t for t, i in vocab.items()}
    if by_id and max(by_id) >= vocab_size:
        raise ConfigError(f"the tokenizer has ids up to {max(by_id)} but the model only "
                          f"{vocab_size} embedding rows; export the tokenizer it was trained with")
    special_ids = set(specials.values())
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        tokens.append(by_id[i])
        if i in special_ids or added.get(i) is True:
            types.append(CONTROL)
        elif i in added:
            types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
    eos = _safe(lambda: tokenizer.eot_id)
    bos = _safe(lambda: tokenizer.bos_id)
    prefix = list(getattr(tokenizer, "prompt_prefix", []) or [])
    return GGUFVocab(tokens, types, merges, pre, bos_id=bos if bos is not None else eos,
                     eos_id=eos, add_bos=bool(prefix), specials=dict(specials))


def _safe(get: Any) -> Any:
    try:
        return get()
    except TokenizerError:
        return None


def _gpt2_parts(tokenizer: Any) -> tuple[dict[str, int], list[str], dict[str, int], str]:
    """OpenAI's GPT-2 files (encoder.json + vocab.bpe), which the tiktoken tokenizer runs."""
    from scratchllm.errors import MissingFileError
    from scratchllm.tokenizers.byte_level import find_gpt2_files, read_gpt2_files

    found = find_gpt2_files(tokenizer.files_dir)
    if found is None:
        raise MissingFileError("GPT-2's encoder.json and vocab.bpe were not found locally; set "
                               "SCRATCHLLM_GPT2_DIR to the folder holding them")
    encoder, merges = read_gpt2_files(*found)
    return encoder, [f"{a} {b}" for a, b in merges], tokenizer.special_tokens, "gpt-2"


def _bpe_parts(tokenizer: Any) -> tuple[dict[str, int], list[str], dict[str, int], str]:
    """scratchllm's own byte-level BPE: GPT-2's spelling and, by default, its regex."""
    from scratchllm.tokenizers.byte_level import GPT2_SPLIT_PATTERN

    if tokenizer.pattern != GPT2_SPLIT_PATTERN:
        raise TokenizerError("this BPE tokenizer splits text with its own pattern, which "
                             "llama.cpp cannot reproduce; only GPT-2's pattern exports to GGUF")
    vocab = {**tokenizer.vocab, **tokenizer.special_tokens}
    return vocab, [f"{a} {b}" for a, b in tokenizer.merges], tokenizer.special_tokens, "gpt-2"


def _hf_parts(tokenizer: Any) -> tuple[dict[str, int], list[str], str, dict[int, bool]]:
    """A tokenizer.json byte-level BPE: tokens, merges, llama.cpp's pre-tokenizer name, and
    added tokens (id -> special?)."""
    spec = json.loads(tokenizer.backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(spec.get("decoder")):
        raise TokenizerError("this tokenizer.json is not a byte-level BPE (SentencePiece and "
                             "WordPiece vocabularies have no GGUF export here); llama.cpp's "
                             "'gpt2' tokenizer needs GPT-2-style byte-level BPE")
    pre = hf_pre_tokenizer_name(spec.get("pre_tokenizer"))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    vocab = dict(tokenizer.backend.get_vocab(with_added_tokens=True))
    added = {i: bool(t.special) for i, t in tokenizer.backend.get_added_tokens_decoder().items()}
    return vocab, merges, pre, added


def _is_byte_level(decoder: Any) -> bool:
    if not isinstance(decoder, dict):
        return False
    if decoder.get("type") == "Sequence":
        return any(_is_byte_level(d) for d in decoder.get("decoders") or [])
    return decoder.get("type") == "ByteLevel"


def hf_pre_tokenizer_name(pre: Any) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer: GPT-2's ByteLevel regex ("gpt-2"),
    Llama 3's split ("llama-bpe") or Qwen2/3's ("qwen2"); TokenizerError for any other."""
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) \
            and not pre.get("add_prefix_space", False):
        return "gpt-2"
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        splits = [s for s in steps if s.get("type") == "Split"]
        levels = [s for s in steps if s.get("type") == "ByteLevel"]
        if len(steps) == 2 and len(splits) == 1 and len(levels) == 1 \
                and not levels[0].get("use_regex", True):
            pattern = (splits[0].get("pattern") or {}).get("Regex")
            if pattern in _SPLIT_PATTERNS:
                return _SPLIT_PATTERNS[pattern]
    raise TokenizerError(
        "this tokenizer's pre-tokenizer has no llama.cpp equivalent; GGUF export supports "
        f"the pre-tokenizers {', '.join(SUPPORTED_PRE)} (GPT-2, Llama 3, Qwen2/Qwen3)")


def add_vocab(writer: Any, vocab: GGUFVocab, chat_template: str | None) -> None:
    """Write the tokenizer.ggml.* keys (and the chat template) with ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    if vocab.bos_id is not None:
        writer.add_bos_token_id(vocab.bos_id)
    if vocab.eos_id is not None:
        writer.add_eos_token_id(vocab.eos_id)
    if vocab.eot_id is not None:
        writer.add_eot_token_id(vocab.eot_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)
