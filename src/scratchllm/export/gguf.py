"""``export --to gguf``: a loaded model as one GGUF file, with the chat template it was trained on.

``weights.gguf_export.write_gguf`` writes the tensors, tokenizer and metadata; this adds what
only the layers above it know: the prompt format of a fine-tune (``data.chat_templates``) as
the file's Jinja chat template, and its end-of-turn token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scratchllm.data.chat_templates import chat_template_for
from scratchllm.weights.auto import chat_end_ids
from scratchllm.weights.gguf_export import write_gguf


def export_chat_template(loaded: Any) -> tuple[str | None, int | None]:
    """(Jinja chat template, end-of-turn id) an export carries for ``loaded``.

    The template renders the prompts ``scratchllm chat`` builds (Alpaca and Phi-3
    fine-tunes included), as ``export --to hf`` writes it.
    """
    template = chat_template_for(loaded.metadata, loaded.tokenizer)
    eos = loaded.eos_ids[0] if loaded.eos_ids else None
    ends = [i for i in chat_end_ids(loaded.tokenizer) if i != eos] if template else []
    return template, (ends[0] if ends else None)


def export_gguf(loaded: Any, path: str | os.PathLike, *, type_name: str | None = None,
                overwrite: bool = False) -> Path:
    """Write an ``open_model`` result as GGUF, with its chat template and end-of-turn id."""
    template, eot = export_chat_template(loaded)
    return write_gguf(loaded.model, loaded.tokenizer, path, type_name=type_name,
                      chat_template=template, eot_id=eot, name=Path(loaded.source).name,
                      overwrite=overwrite)
