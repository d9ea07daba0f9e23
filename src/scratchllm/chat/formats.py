"""How a conversation becomes prompt ids, in the format the model was trained on.

* ``TemplateFormat``: the tokenizer's Hugging Face chat template (Llama 3, Qwen3, ...),
  rendered as ``transformers``' ``apply_chat_template(messages, add_generation_prompt=True)``.
* ``InstructionFormat``: the book's Alpaca or Phi-3 prompts (book 7.2, exercise 7.1) for a
  model fine-tuned with ``scratchllm finetune instruct``. Those models only ever saw one
  instruction per example, each example ending with ``<|endoftext|>``; so earlier exchanges
  are written as complete examples (prompt + answer) each followed by the end-of-text token,
  exactly as training packed them, and the new message as a prompt ending with the response
  header. A system message is put before the *new* instruction's text (separated by a blank
  line), where a single-turn model reads it as part of what to do. The text comes from
  ``data.chat_templates`` (which also writes it as the Jinja template an export carries), and
  the text between end tokens is encoded whole, as plain text: the ids ``transformers``'
  ``apply_chat_template`` gives for the exported template (which encodes the rendered prompt
  as one string), byte for byte.
* ``PlainFormat``: base models without either: ``User: ...`` / ``Assistant: ...`` lines,
  stopping when the model starts a ``User:`` line of its own.

``choose_format`` picks one: an explicit style, else the ``prompt_style`` a scratchllm
fine-tuned model's metadata names, else the chat template, else plain text.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from scratchllm.chat.conversation import Turn, as_messages
from scratchllm.chat.template_ids import template_prompt_ids
from scratchllm.data.chat_templates import instruction_chat_pieces, prompt_style_of
from scratchllm.data.instruction import PROMPT_STYLES
from scratchllm.errors import ConfigError, TokenizerError

STYLES = ("template", *PROMPT_STYLES, "plain")


class PromptFormat(ABC):
    """Conversation -> prompt ids; ``stop_strings`` end an answer besides the end ids."""

    name: str = ""
    stop_strings: tuple[str, ...] = ()

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def encode(self, system: str | None, turns: Sequence[Turn], user: str) -> list[int]:
        """Ids of the whole prompt: system, earlier exchanges, the new message, answer header."""

    @property
    @abstractmethod
    def description(self) -> str:
        """A few words for the user: which format the prompts are in."""


class TemplateFormat(PromptFormat):
    name = "template"

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("this model's tokenizer has no chat template; choose "
                              "--prompt-style alpaca, phi3 or plain")
        super().__init__(tokenizer)

    def encode(self, system: str | None, turns: Sequence[Turn], user: str) -> list[int]:
        return template_prompt_ids(self.tokenizer, as_messages(system, turns, user))

    @property
    def description(self) -> str:
        return "the model's chat template"


class InstructionFormat(PromptFormat):
    def __init__(self, tokenizer: Any, style: str) -> None:
        if style not in PROMPT_STYLES:
            raise ConfigError(f"unknown prompt style {style!r}; use one of {', '.join(STYLES)}")
        super().__init__(tokenizer)
        self.name = style
        try:
            self.end_id: int | None = tokenizer.eot_id
        except TokenizerError:
            self.end_id = None

    def encode(self, system: str | None, turns: Sequence[Turn], user: str) -> list[int]:
        ids: list[int] = []
        end = [self.end_id] if self.end_id is not None else []
        for text, ended in instruction_chat_pieces(self.name, as_messages(system, turns, user)):
            ids += self.tokenizer.encode_ordinary(text) + (end if ended else [])
        return ids

    @property
    def description(self) -> str:
        return {"alpaca": "Alpaca", "phi3": "Phi-3"}[self.name] + " instruction prompts"


class PlainFormat(PromptFormat):
    name = "plain"
    stop_strings = ("\nUser:",)

    def encode(self, system: str | None, turns: Sequence[Turn], user: str) -> list[int]:
        text = f"{system}\n\n" if system else ""
        for turn in turns:
            text += f"User: {turn.user}\nAssistant:{turn.assistant}\n"
        text += f"User: {user}\nAssistant:"
        return list(self.tokenizer.prompt_prefix) + self.tokenizer.encode_ordinary(text)

    @property
    def description(self) -> str:
        return ("plain 'User:'/'Assistant:' text (the model has no chat template or prompt "
                "style; a base model only continues text, so answers may wander)")


def choose_format(tokenizer: Any, metadata: dict[str, Any] | None = None,
                  style: str | None = None) -> PromptFormat:
    """The prompt format for a model: ``style`` if given (one of STYLES), else its metadata's
    ``prompt_style`` (how it was fine-tuned), else its chat template, else plain text."""
    if style is None:
        stored = prompt_style_of(metadata)  # the rule export's chat_template_for applies
        if stored is not None:
            style = stored
        elif getattr(tokenizer, "chat_template", None):
            style = "template"
        else:
            style = "plain"
    if style == "template":
        return TemplateFormat(tokenizer)
    if style == "plain":
        return PlainFormat(tokenizer)
    return InstructionFormat(tokenizer, style)
