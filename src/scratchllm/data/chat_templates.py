"""The Alpaca / Phi-3 instruction prompts as a conversation: Python text and a Jinja chat template.

``scratchllm chat`` and ``serve`` turn a conversation into the prompts a model fine-tuned with
``finetune instruct`` saw in training (``data.instruction``); other tools (``transformers``'
``apply_chat_template``, ``transformers serve``, vLLM, llama.cpp) need the same prompt as a
Jinja ``chat_template``. Both come from here, and both from the one definition of each format
(``format_input`` and ``response_prefix``): the template's literal text is cut out of those
functions' own output, so a change to a format reaches the exported template too.

How messages become prompts (the rules of ``serve.prompts.chat_prompt``): system (and
developer) messages join with a blank line and go before the *newest* user message, as part of
its instruction; consecutive user messages join with a newline; a user message answered by an
assistant message is one earlier example, written whole (prompt, answer, end token) as
training packed it; the last user message becomes a prompt ending with the response header.

``chat_template_for(metadata, tokenizer)`` is the template an exported model carries: its
instruction format when its metadata names one (how it was fine-tuned), else the chat
template its tokenizer came with, else None. ``prompt_style_of`` is the same rule ``chat``'s
``choose_format`` applies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from scratchllm.data.instruction import PROMPT_STYLES, check_style, format_input, response_prefix

SYSTEM_ROLES = ("system", "developer")
_SLOT = "\x00instruction\x00"  # cut out of format_input's text: what surrounds an instruction


def prompt_style_of(metadata: Mapping[str, Any] | None) -> str | None:
    """The instruction format a model was fine-tuned with (its metadata's ``prompt_style``)."""
    style = (metadata or {}).get("prompt_style")
    return style if style in PROMPT_STYLES else None


def split_messages(messages: Sequence[Mapping[str, Any]]
                   ) -> tuple[str | None, list[tuple[str, str]], str | None]:
    """(system, earlier exchanges as (user, assistant), newest unanswered user message)."""
    system_parts = [str(m["content"]) for m in messages if m["role"] in SYSTEM_ROLES]
    system = "\n\n".join(system_parts) or None
    turns: list[tuple[str, str]] = []
    user: str | None = None
    for message in messages:
        if message["role"] == "user":
            content = str(message["content"])
            user = content if user is None else user + "\n" + content
        elif message["role"] == "assistant":
            turns.append((user or "", str(message["content"])))
            user = None
    return system, turns, user


def instruction_prompt(style: str, instruction: str, *, header: bool = True) -> str:
    """One instruction as a prompt (no input), with the response header unless told not to."""
    text = format_input({"instruction": instruction, "input": ""}, style)
    return text + response_prefix(style) if header else text


def instruction_chat_pieces(style: str, messages: Sequence[Mapping[str, Any]], *,
                            add_generation_prompt: bool = True) -> list[tuple[str, bool]]:
    """The conversation in ``style`` as (text, followed by the end token) pieces: each earlier
    exchange (prompt and answer), then the newest message's prompt, if there is one."""
    check_style(style)
    system, turns, user = split_messages(messages)
    pieces = [(instruction_prompt(style, asked) + answer, True) for asked, answer in turns]
    if user is not None:
        instruction = f"{system}\n\n{user}" if system else user
        pieces.append((instruction_prompt(style, instruction, header=add_generation_prompt),
                       False))
    return pieces


def instruction_chat_text(style: str, messages: Sequence[Mapping[str, Any]], *,
                          end_token: str = "", add_generation_prompt: bool = True) -> str:
    """The whole conversation as text in ``style``; ``end_token`` follows each answer."""
    return "".join(text + (end_token if ended else "") for text, ended in
                   instruction_chat_pieces(style, messages,
                                           add_generation_prompt=add_generation_prompt))


def _literal(text: str) -> str:
    """A Jinja string literal (JSON's escapes are Jinja's too)."""
    return json.dumps(text)


def instruction_template(style: str, end_token: str = "") -> str:
    """A Jinja chat template that renders ``instruction_chat_text(style, messages,
    end_token=end_token, add_generation_prompt=...)`` for any messages, as Hugging Face
    renders templates (sandboxed, ``trim_blocks``/``lstrip_blocks``: the template is one
    line, so neither applies)."""
    check_style(style)
    before, after = format_input({"instruction": _SLOT, "input": ""}, style).split(_SLOT)
    head, tail, answer = _literal(before), _literal(after), _literal(response_prefix(style))
    end = _literal(end_token)
    roles = _literal(list(SYSTEM_ROLES)).replace('"', "'")
    return (
        "{%- set ns = namespace(system=none, user=none) -%}"
        "{%- for message in messages -%}"
        f"{{%- if message['role'] in {roles} -%}}"
        "{%- if ns.system is none -%}{%- set ns.system = message['content'] | string -%}"
        "{%- else -%}{%- set ns.system = ns.system ~ '\\n\\n' ~ (message['content'] | string)"
        " -%}{%- endif -%}"
        "{%- elif message['role'] == 'user' -%}"
        "{%- if ns.user is none -%}{%- set ns.user = message['content'] | string -%}"
        "{%- else -%}{%- set ns.user = ns.user ~ '\\n' ~ (message['content'] | string)"
        " -%}{%- endif -%}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{{{{- {head} ~ (ns.user or '') ~ {tail} ~ {answer} ~ (message['content'] | string)"
        f" ~ {end} -}}}}"
        "{%- set ns.user = none -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if ns.user is not none -%}"
        f"{{{{- {head} -}}}}"
        "{%- if ns.system -%}{{- ns.system ~ '\\n\\n' -}}{%- endif -%}"
        f"{{{{- ns.user ~ {tail} -}}}}"
        f"{{%- if add_generation_prompt -%}}{{{{- {answer} -}}}}{{%- endif -%}}"
        "{%- endif -%}"
    )


def end_token_text(tokenizer: Any) -> str:
    """The text of the tokenizer's end-of-text token (what training put after each answer),
    or "" when it has none."""
    try:
        end_id = tokenizer.eot_id
    except Exception:  # a tokenizer that names no end token
        return ""
    for text, token_id in (getattr(tokenizer, "special_tokens", None) or {}).items():
        if token_id == end_id:
            return text
    return tokenizer.decode([end_id])


def chat_template_for(metadata: Mapping[str, Any] | None, tokenizer: Any) -> str | None:
    """The Jinja chat template that renders the prompts ``scratchllm chat`` builds for this
    model: its instruction format (``prompt_style`` in its metadata), else its tokenizer's own
    chat template, else None (a base model: no chat format to export)."""
    style = prompt_style_of(metadata)
    if style is not None:
        return instruction_template(style, end_token_text(tokenizer) if tokenizer else "")
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) and template else None
