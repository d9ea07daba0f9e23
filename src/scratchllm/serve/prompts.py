"""Requests to token ids: completion prompts as given, chat messages in the model's format.

Chat messages go through ``scratchllm.chat``'s prompt formats, as ``scratchllm chat`` does:
the chat template when the tokenizer has one (the messages passed through as they came), the
Alpaca/Phi-3 prompts of a model fine-tuned with ``scratchllm finetune instruct``, else plain
``User:``/``Assistant:`` lines.
"""

from __future__ import annotations

from typing import Any

from scratchllm.chat import PromptFormat, Turn
from scratchllm.chat.formats import TemplateFormat
from scratchllm.chat.template_ids import template_prompt_ids
from scratchllm.serve.errors import APIError, bad_param

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


def chat_prompt(prompt_format: PromptFormat, messages: list[dict[str, str]]) -> list[int]:
    """Prompt ids of a conversation, ending where the assistant's reply begins.

    A model with a Hugging Face chat template gets the messages as they came, in order (a
    ``developer`` message is OpenAI's new name for ``system``): the template has its own
    rules for where a system message goes and for two user messages in a row, and the
    prompt must be the one ``apply_chat_template`` gives. For our own formats (Alpaca,
    Phi-3, plain), which know only (user, answer) exchanges: system (and developer) messages
    join into the system message; a user message answered by an assistant message is one
    earlier exchange; consecutive user messages join. Either way the last message must be
    the user's (the reply answers it).
    """
    spoken = [m["role"] for m in messages if m["role"] in ("user", "assistant")]
    if not spoken or spoken[-1] != "user":
        raise bad_param("messages", "the last non-system message must be from the user "
                        "(the reply answers it)")
    if isinstance(prompt_format, TemplateFormat):
        return template_prompt_ids(prompt_format.tokenizer, [
            {**m, "role": "system" if m["role"] == "developer" else m["role"]}
            for m in messages])
    system = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
    turns: list[Turn] = []
    user: str | None = None
    for message in messages:
        if message["role"] == "user":
            user = message["content"] if user is None else user + "\n" + message["content"]
        elif message["role"] == "assistant":
            turns.append(Turn(user or "", message["content"]))
            user = None
    return prompt_format.encode(system or None, turns, user or "")


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids of a prompt (with the BOS the tokenizer asks for; special-token text allowed,
    as a server's prompts are often pre-rendered chat formats)."""
    return tokenizer.encode_prompt(text, allowed_special="all")


def check_ids(ids: list[int], vocab_size: int, param: str) -> list[int]:
    if not ids:
        raise bad_param(param, "encodes to no tokens; send some text")
    low, high = min(ids), max(ids)
    if low < 0 or high >= vocab_size:
        raise bad_param(param, f"token ids must be in [0, {vocab_size}), got values from "
                        f"{low} to {high}")
    return ids


def budget(prompt_len: int, max_tokens: int | None, context: int, *, chat: bool,
           param: str) -> int:
    """How many tokens a prompt may generate; 400 when the request cannot fit the context."""
    if prompt_len >= context:
        raise APIError(400, f"{param}: the prompt is {prompt_len} tokens but the model's "
                       f"context length is {context} tokens (at least one more is needed to "
                       "answer); shorten the prompt", param=param, code="context_length_exceeded")
    room = context - prompt_len
    if max_tokens is None:
        return room if chat else min(DEFAULT_COMPLETION_TOKENS, room)
    if max_tokens > room:
        field = "max_completion_tokens" if chat else "max_tokens"
        raise APIError(400, f"{field}: the prompt is {prompt_len} tokens and {max_tokens} new "
                       f"tokens were asked for, {prompt_len + max_tokens} in all, but the "
                       f"model's context length is {context} tokens; ask for at most {room}",
                       param=field, code="context_length_exceeded")
    return max_tokens
