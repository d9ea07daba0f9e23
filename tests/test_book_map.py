"""docs/book-map.md is how a reader finds the book's code: every reference in it must exist."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

_PACKAGES = ("tokenizers", "data", "model", "generate", "train", "weights", "finetune",
             "evaluate", "utils", "chat", "serve", "cli")
# `module.path:Name` or `module.path:Name.attr`, module paths relative to scratchllm.
_REF = re.compile(r"`((?:%s)(?:\.[a-z_0-9]+)*):([A-Za-z_]\w*(?:\.\w+)?)" % "|".join(_PACKAGES))


def _exists(module_name: str, attr_path: str) -> bool:
    obj = importlib.import_module(f"scratchllm.{module_name}")
    for part in attr_path.split("."):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif isinstance(obj, type):  # an attribute set in __init__, e.g. GPTModel.tok_emb
            return f"self.{part} " in inspect.getsource(obj)
        else:
            return False
    return True


def test_every_book_map_reference_resolves():
    text = (REPO_ROOT / "docs" / "book-map.md").read_text(encoding="utf-8")
    refs = _REF.findall(text)
    assert len(refs) > 60, "the book map lost its references"
    missing = [f"{m}:{a}" for m, a in refs if not _exists(m, a)]
    assert not missing, f"book map points at names that do not exist: {missing}"
