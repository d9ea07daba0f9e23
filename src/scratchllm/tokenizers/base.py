"""The contract every tokenizer keeps, and how to pick one by name (book 2.2-2.5).

Special tokens such as ``<|endoftext|>`` (book 2.4) are the one place where tokenizers can
silently go wrong: user text that happens to contain the string would either become a
control token or be split into harmless pieces, depending on the library. Here, like
tiktoken, the default refuses: ``encode`` raises ``TokenizerError`` unless the caller says
which special tokens the text may contain (``allowed_special={"<|endoftext|>"}`` or
``"all"``). ``encode_ordinary`` is the explicit opt-out: it treats everything as plain text.
"""

from __future__ import annotations

import operator
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import AbstractSet, Any, Literal, Union

from scratchllm.errors import MissingFileError, TokenizerError

AllowedSpecial = Union[Literal["all", "none"], AbstractSet[str]]

TOKENIZER_NAMES = ("gpt2",)


class Tokenizer(ABC):
    """Text <-> token ids. Subclasses: SimpleTokenizer, BPETokenizer, GPT2Tokenizer."""

    @property
    @abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """Special token string -> id (always includes ``<|endoftext|>``)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (the model's embedding rows), special tokens included."""

    def encode(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        """Token ids of ``text``; special token strings must be allowed explicitly.

        Allowed special token strings become their single ids; the text between them goes
        through ``encode_ordinary``.
        """
        allowed = self.allowed_set(allowed_special)
        self.check_disallowed(text, allowed)
        if not allowed:
            return self.encode_ordinary(text)
        special = self.special_tokens
        ids: list[int] = []
        for piece in self._special_splitter().split(text):  # odd pieces are special strings
            if piece in allowed:
                ids.append(special[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def _special_splitter(self) -> re.Pattern:
        """A regex that splits text around special token strings (longest first), built once."""
        splitter = self.__dict__.get("_splitter_cache")
        if splitter is None:
            ordered = sorted(self.special_tokens, key=len, reverse=True)
            splitter = re.compile("(" + "|".join(map(re.escape, ordered)) + ")")
            self.__dict__["_splitter_cache"] = splitter
        return splitter

    @abstractmethod
    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text`` with every special token string treated as plain text."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (a list, tuple, or 1-D tensor of ints)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able spec; ``tokenizer_from_dict`` rebuilds an equal tokenizer from it."""

    @property
    def eot_id(self) -> int:
        """Id of ``<|endoftext|>``, which separates documents (book 2.4)."""
        return self.special_tokens["<|endoftext|>"]

    @property
    def bos_id(self) -> int | None:
        """The begin-of-text id, or None: GPT-2 (book 2.4) has none, Llama 3 has one."""
        return None

    @property
    def prompt_prefix(self) -> list[int]:
        """Ids a model expects before any prompt (Llama 3: ``[<|begin_of_text|>]``); the
        tokenizer's own files decide (Hugging Face: add_special_tokens=True). Empty here."""
        return []

    def encode_prompt(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        """Ids of a prompt to generate from: ``encode`` behind ``prompt_prefix``.

        Training text is encoded without it (``encode``): documents are separated by the
        end-of-text token there (book 2.4). A prompt that already starts with the prefix
        (a chat template that writes ``<|begin_of_text|>`` itself) does not get it twice.
        """
        ids = self.encode(text, allowed_special)
        prefix = self.prompt_prefix
        if prefix and ids[: len(prefix)] != prefix:
            ids = prefix + ids
        return ids

    def allowed_set(self, allowed_special: AllowedSpecial) -> frozenset[str]:
        """Normalise ``allowed_special`` ("all" | "none" | a set of token strings)."""
        if allowed_special == "all":
            return frozenset(self.special_tokens)
        if allowed_special == "none" or not allowed_special:
            return frozenset()
        if isinstance(allowed_special, str):
            raise TokenizerError(
                f"allowed_special={allowed_special!r} is not valid; pass 'all', 'none' or a set "
                f"such as {{'<|endoftext|>'}} (a bare string is not a set)"
            )
        allowed = frozenset(allowed_special)
        unknown = sorted(allowed - set(self.special_tokens))
        if unknown:
            raise TokenizerError(
                f"unknown special token(s) {unknown} in allowed_special; this tokenizer has "
                f"{sorted(self.special_tokens)}"
            )
        return allowed

    def check_disallowed(self, text: str, allowed: frozenset[str]) -> None:
        """Refuse text holding a special token string the caller did not allow (one `in` scan)."""
        for token in self.special_tokens:
            if token not in allowed and token in text:
                raise TokenizerError(
                    f"text contains the special token {token!r}, which is not allowed; pass "
                    f"allowed_special={{{token!r}}} (or 'all') to encode it as one special id, "
                    "or use encode_ordinary() to encode it as plain text"
                )


def ids_to_list(ids: Iterable[int]) -> list[int]:
    """Accept lists, tuples, numpy arrays and 1-D tensors of integer ids; return plain ints."""
    tolist = getattr(ids, "tolist", None)
    out = tolist() if tolist is not None else list(ids)
    if isinstance(out, int):  # a 0-d tensor: one id
        return [out]
    try:
        return [operator.index(i) for i in out]  # np.int64 / 0-d tensors -> int; floats refused
    except TypeError:
        raise TokenizerError(
            "decode() takes one sequence of integer token ids; decode each row of a batch separately"
        ) from None


def without_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded; replace them with U+FFFD like tiktoken does
    (a high+low pair still becomes its one character), so every tokenizer treats them alike."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def tokenizer_from_dict(spec: dict[str, Any], base_dir: str | Path | None = None) -> Tokenizer:
    """Rebuild a tokenizer from ``Tokenizer.to_dict()`` output (e.g. stored in a checkpoint).

    ``base_dir`` resolves relative file names in the spec (a model directory's tokenizer.json).
    """
    from scratchllm.tokenizers.bpe import BPETokenizer
    from scratchllm.tokenizers.gpt2 import GPT2Tokenizer
    from scratchllm.tokenizers.simple import SimpleTokenizer

    kinds = {"gpt2": GPT2Tokenizer, "bpe": BPETokenizer, "simple": SimpleTokenizer, "hf": None}
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in kinds:
        raise TokenizerError(
            f"tokenizer spec has type {kind!r}; expected one of {sorted(kinds)} "
            "(a dict written by Tokenizer.to_dict())"
        )
    if kind == "hf":  # imported only when needed: it brings in the `tokenizers` library
        from scratchllm.tokenizers.hf import HFTokenizer
        return HFTokenizer.from_dict(spec, base_dir=base_dir)
    return kinds[kind].from_dict(spec)


def get_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """``"gpt2"`` -> GPT2Tokenizer(); a saved BPE ``.json`` -> BPETokenizer.load(path); a
    Hugging Face ``tokenizer.json`` (or its directory) -> HFTokenizer."""
    from scratchllm.tokenizers.bpe import BPETokenizer
    from scratchllm.tokenizers.gpt2 import GPT2Tokenizer

    name = str(name_or_path)
    if name.lower() == "gpt2":
        return GPT2Tokenizer()
    if Path(name).is_dir() or Path(name).name == "tokenizer.json":  # Hugging Face tokenizer
        from scratchllm.tokenizers.hf import HFTokenizer
        return HFTokenizer.from_dir(name)
    if name.endswith(".json"):
        if not Path(name).is_file():
            raise MissingFileError(f"tokenizer file not found: {name}; save one with BPETokenizer.save()")
        return BPETokenizer.load(name)
    raise TokenizerError(
        f"unknown tokenizer {name!r}; choose one of {list(TOKENIZER_NAMES)}, a path to a BPE "
        "tokenizer .json saved by BPETokenizer.save(), or a Hugging Face tokenizer.json (or "
        "the directory holding it)"
    )
