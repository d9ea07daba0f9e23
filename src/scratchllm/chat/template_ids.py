"""Chat-template prompts as token ids, with special token strings typed by the user kept as text.

A chat template writes control tokens (``<|eot_id|>``, ``<|im_start|>``) around each message.
Encoding the rendered text with every special token allowed would also turn such a string
*inside a message* into a control token: a user could end the turn or forge a system
message by typing it. So, before rendering, every special token string in a message is
wrapped in two private-use characters (U+F0000 ... U+F0001, the markers ``transformers``
uses for ``apply_chat_template(..., sanitize_control_tokens=True)``); after rendering, the
marked strings are encoded as plain text and the rest as usual. Messages without special
token strings give exactly the ids of ``tokenizer(rendered, add_special_tokens=False)``,
which is what ``transformers`` feeds the model; marked ones give what its sanitizing
option gives. Those markers are removed from messages beforehand so they cannot be forged.
"""

from __future__ import annotations

import re
from typing import Any

from scratchllm.errors import TokenizerError

MARK_START, MARK_END = "\U000f0000", "\U000f0001"


def _special_pattern(tokenizer: Any) -> re.Pattern | None:
    """Any special token string, longest first (so a token wins over one it contains)."""
    specials = sorted(tokenizer.special_tokens, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, specials))) if specials else None


def mark_specials(text: str, pattern: re.Pattern | None) -> str:
    """``text`` with old markers removed and each special token string wrapped in markers."""
    text = text.replace(MARK_START, "").replace(MARK_END, "")
    if pattern is None:
        return text
    return pattern.sub(lambda m: MARK_START + m.group(0) + MARK_END, text)


def _piece_ids(tokenizer: Any, piece: str, as_text: bool, newline: list[int]) -> list[int]:
    """Ids of a piece from the middle of a chat, encoded after a newline that is then removed,
    so a tokenizer that treats the start of a text specially (a SentencePiece prefix space)
    encodes it as it would mid-text."""
    def encode(text: str) -> list[int]:
        return tokenizer.encode_ordinary(text) if as_text else \
            tokenizer.encode(text, allowed_special="all")

    ids = encode("\n" + piece)
    return ids[len(newline):] if ids[:len(newline)] == newline else encode(piece)


def encode_marked(tokenizer: Any, rendered: str) -> list[int]:
    """Ids of a chat rendered from marked messages (see the module docstring)."""
    specials = _special_pattern(tokenizer)
    if specials is None or (MARK_START not in rendered and MARK_END not in rendered):
        return tokenizer.encode(rendered, allowed_special="all")
    # Odd groups: a marked token (text) or None for a lone marker a template split off.
    splitter = re.compile(f"{MARK_START}({specials.pattern}){MARK_END}|[{MARK_START}{MARK_END}]")
    pieces = splitter.split(rendered)
    newline = tokenizer.encode("\n", allowed_special="all")
    ids = tokenizer.encode(pieces[0], allowed_special="all")
    for index, piece in enumerate(pieces[1:], start=1):
        if not piece:
            continue
        as_text = index % 2 == 1
        piece_ids = _piece_ids(tokenizer, piece, as_text, newline)
        if as_text and tokenizer.special_tokens.get(piece) in piece_ids:
            raise TokenizerError(f"the tokenizer turns the plain text {piece!r} into its special "
                                 "token; remove it from the message")
        ids += piece_ids
    return ids


def template_prompt_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt ids of ``messages`` in the tokenizer's chat template, ready for the answer."""
    pattern = _special_pattern(tokenizer)
    marked = [{**m, "content": mark_specials(m["content"], pattern)} for m in messages]
    rendered = tokenizer.apply_chat_template(marked, add_generation_prompt=True)
    return encode_marked(tokenizer, rendered)
