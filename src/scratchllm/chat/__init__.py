"""Chatting with a model: conversations, prompts in the model's own format, streamed answers.

* ``Conversation`` / ``Turn``: the system message and the exchanges so far (the server reads
  chat-API messages into the same shape: ``serve.prompts.chat_prompt``).
* ``choose_format(tokenizer, metadata, style)``: chat template, Alpaca/Phi-3, or plain text.
* ``fit_prompt``: the prompt ids, dropping the oldest exchanges to fit the context window.
* ``ChatSession.ask(text)``: a ``Reply`` streaming text pieces; ``Reply.stop()`` cuts it.
"""

from scratchllm.chat.conversation import Conversation, Turn, as_messages
from scratchllm.chat.formats import (STYLES, InstructionFormat, PlainFormat, PromptFormat,
                                     TemplateFormat, choose_format)
from scratchllm.chat.session import ChatSession, FittedPrompt, Reply, Sampling, fit_prompt
from scratchllm.chat.template_ids import template_prompt_ids

__all__ = ["STYLES", "ChatSession", "Conversation", "FittedPrompt", "InstructionFormat",
           "PlainFormat", "PromptFormat", "Reply", "Sampling", "TemplateFormat", "Turn",
           "as_messages", "choose_format", "fit_prompt", "template_prompt_ids"]
