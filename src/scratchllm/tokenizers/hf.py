"""Any Hugging Face ``tokenizer.json`` (Llama 3, Qwen3, GPT-2, ...) behind our Tokenizer contract.

Pretrained models come with their own tokenizer; the Rust ``tokenizers`` library runs it, and
this class adds what the rest of scratchllm expects (book 2.4-2.5): special token strings in
user text are refused unless allowed, ``eot_id`` names the end-of-text token, ``to_dict``
lets a model directory rebuild it, and ``apply_chat_template`` renders the model's chat
format from tokenizer_config.json with jinja2.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import tokenizers

from scratchllm.utils.atomic import atomic_write_text
from scratchllm.errors import MissingFileError, TokenizerError
from scratchllm.tokenizers.base import Tokenizer, ids_to_list, without_surrogates
from scratchllm.tokenizers.hf_bytes import ByteDecoder
from scratchllm.utils.json_files import read_json_object

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"  # where newer transformers versions keep the template
# tokenizer_config.json keys worth keeping with a saved model.
_CONFIG_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template",
                "model_max_length", "tokenizer_class", "add_bos_token")
# End-of-text tokens of common models, tried when the config names none.
_EOS_GUESSES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes tokens as "str" or {"content": "str", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, error=TokenizerError, fix="download the file again")


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` plus its tokenizer_config.json (eos/bos, chat template)."""

    def __init__(self, backend: tokenizers.Tokenizer, config: dict[str, Any] | None = None,
                 source: Path | None = None) -> None:
        self.backend = backend
        self.config = {k: v for k, v in (config or {}).items() if k in _CONFIG_KEYS}
        self.source = source  # the tokenizer.json this came from (copied on save)
        spec = backend.to_str()
        # A second backend that reads special token strings as plain text (encode_ordinary).
        self._plain = tokenizers.Tokenizer.from_str(spec)
        self._plain.encode_special_tokens = True
        self._special = {tok.content: i for i, tok in backend.get_added_tokens_decoder().items()
                         if tok.special}
        self._bytes = ByteDecoder.for_decoder(json.loads(spec).get("decoder"),
                                              backend.id_to_token)
        self._prefix = self._find_prompt_prefix()

    def _find_prompt_prefix(self) -> list[int]:
        """The ids ``transformers`` puts before a text (add_special_tokens=True), as a list.

        tokenizer_config.json's ``add_bos_token``, when present, decides (transformers then
        rebuilds the post-processor from it); otherwise tokenizer.json's post-processor does:
        Llama 3's TemplateProcessing adds ``<|begin_of_text|>``, GPT-2's and Qwen's add none.
        Tokens the post-processor appends (an EOS) are left out: a prompt is continued.
        """
        if "add_bos_token" in self.config:
            bos = self._token_id("bos_token")
            return [bos] if self.config["add_bos_token"] is True and bos is not None else []
        probe = "Hello world"
        plain = self.backend.encode(probe, add_special_tokens=False).ids
        full = self.backend.encode(probe, add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start]
        return []

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_file(cls, tokenizer_json: str | Path, config: dict[str, Any] | None = None
                  ) -> "HFTokenizer":
        path = Path(tokenizer_json)
        if not path.is_file():
            raise MissingFileError(f"{path} not found; a Hugging Face tokenizer needs its "
                                   "tokenizer.json (download it with the model)")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises a plain Exception
            raise TokenizerError(f"{path} is not a valid tokenizer.json ({err}); download it "
                                 "again") from err
        return cls(backend, config, source=path)

    @classmethod
    def from_dir(cls, path: str | Path) -> "HFTokenizer":
        """Load DIR/tokenizer.json with DIR/tokenizer_config.json (and chat_template.jinja)."""
        path = Path(path)
        directory = path.parent if path.is_file() else path
        tokenizer_json = path if path.is_file() else path / TOKENIZER_FILE
        if not tokenizer_json.is_file():
            raise MissingFileError(f"{tokenizer_json} not found; put the model's tokenizer.json "
                                   f"(and tokenizer_config.json) in {directory}")
        config: dict[str, Any] = {}
        if (directory / CONFIG_FILE).is_file():
            config = _read_json(directory / CONFIG_FILE)
        if (directory / TEMPLATE_FILE).is_file() and not config.get("chat_template"):
            config["chat_template"] = (directory / TEMPLATE_FILE).read_text(encoding="utf-8")
        return cls.from_file(tokenizer_json, config)

    @classmethod
    def from_dict(cls, spec: dict[str, Any], base_dir: str | Path | None = None
                  ) -> "HFTokenizer":
        name = spec.get("tokenizer_file")
        if not isinstance(name, str):
            raise TokenizerError("hf tokenizer spec lacks 'tokenizer_file'; re-save the model")
        path = Path(name)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        return cls.from_file(path, spec.get("config") or {})

    def to_dict(self) -> dict[str, Any]:
        """Points at the source tokenizer.json; ``save_files`` makes a self-contained copy."""
        source = str(self.source.resolve()) if self.source else None
        return {"type": "hf", "tokenizer_file": source, "config": dict(self.config)}

    def save_files(self, directory: str | Path) -> dict[str, Any]:
        """Write tokenizer.json + tokenizer_config.json into ``directory`` (atomically each);
        return the spec, whose file name is relative to that directory."""
        directory = Path(directory)
        text = (self.source.read_text(encoding="utf-8") if self.source and self.source.is_file()
                else self.backend.to_str())
        atomic_write_text(directory / TOKENIZER_FILE, text)
        atomic_write_text(directory / CONFIG_FILE, json.dumps(self.config, indent=2) + "\n")
        return {"type": "hf", "tokenizer_file": TOKENIZER_FILE, "config": dict(self.config)}

    # ------------------------------------------------------------------ Tokenizer contract
    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _token_id(self, key: str) -> int | None:
        text = _token_text(self.config.get(key))
        return self.backend.token_to_id(text) if text is not None else None

    @property
    def eot_id(self) -> int:
        """The end-of-text id: tokenizer_config's eos_token, else a well-known end token."""
        found = self._token_id("eos_token")
        for guess in _EOS_GUESSES:
            if found is None:
                found = self.backend.token_to_id(guess)
        if found is None:
            raise TokenizerError("this tokenizer names no end-of-text token; add "
                                 '"eos_token" to its tokenizer_config.json')
        return found

    @property
    def bos_id(self) -> int | None:
        """The begin-of-text id, if the model has one (Llama 3 starts prompts with it):
        tokenizer_config's bos_token, else what the post-processor puts first."""
        found = self._token_id("bos_token")
        return found if found is not None else (self._prefix[0] if self._prefix else None)

    @property
    def prompt_prefix(self) -> list[int]:
        return list(self._prefix)

    def encode_ordinary(self, text: str) -> list[int]:
        """Plain-text ids: no BOS is added and special token strings are ordinary text."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a str, got {type(text).__name__}")
        # The Rust binding raises a bare TypeError on lone surrogates; the others give U+FFFD.
        return self._plain.encode(without_surrogates(text), add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = self._checked(ids)
        return self.backend.decode(ids, skip_special_tokens=False)

    # ------------------------------------------------------------------ raw bytes (streaming)
    @property
    def has_byte_decoding(self) -> bool:
        """Whether ``decode_bytes`` works: byte-level and ``<0xNN>`` byte-fallback decoders."""
        return self._bytes is not None

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """UTF-8 bytes of ``decode(ids)``, but a character split across tokens stays split,
        so a stream can hold back its first bytes until the rest arrive."""
        return self._byte_decoder().start(self._checked(ids))

    def decode_bytes_continued(self, ids: Iterable[int]) -> bytes:
        """Bytes of ids that continue earlier ones (no start-of-text space stripping)."""
        return self._byte_decoder().continued(self._checked(ids))

    def _byte_decoder(self) -> ByteDecoder:
        if self._bytes is None:
            raise TokenizerError("this tokenizer's decoder has no byte form (neither byte-level "
                                 "nor <0xNN> byte fallback); use decode()")
        return self._bytes

    def _checked(self, ids: Iterable[int]) -> list[int]:
        ids = ids_to_list(ids)
        size = self.vocab_size
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise TokenizerError(f"token ids {bad[:5]} are outside this tokenizer's "
                                 f"vocabulary (0..{size - 1})")
        return ids

    # ------------------------------------------------------------------ chat
    @property
    def chat_template(self) -> str | None:
        template = self.config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        return template if isinstance(template, str) else None

    def apply_chat_template(self, messages: list[dict[str, Any]],
                            add_generation_prompt: bool = True, **extra: Any) -> str:
        """Render ``messages`` ([{"role": ..., "content": ...}]) in the model's chat format."""
        template = self.chat_template
        if template is None:
            raise TokenizerError("this tokenizer has no chat template (no 'chat_template' in "
                                 "tokenizer_config.json, no chat_template.jinja); use an "
                                 "instruction-tuned model's tokenizer or format prompts yourself")
        # What transformers passes: the named special tokens the tokenizer has (absent ones
        # stay undefined), tools/documents as None unless given.
        context: dict[str, Any] = {"tools": None, "documents": None}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            text = _token_text(self.config.get(key))
            if text is not None:
                context[key] = text
        context.update(extra)
        return _render(template, messages=messages, add_generation_prompt=add_generation_prompt,
                       **context)


def _render(template: str, **context: Any) -> str:
    """Render a chat template the way Hugging Face does (sandboxed jinja2, trimmed blocks)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TokenizerError(f"chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, ensure_ascii=False, indent=None, separators=None, \
        sort_keys=False: json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                                    separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["dict"] = lambda *args, **kwargs: dict(*args, **kwargs)
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(**context)
    except jinja2.TemplateError as err:
        raise TokenizerError(f"cannot render the chat template ({err}); check the messages' "
                             "roles and contents") from err
