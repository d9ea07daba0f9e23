"""Data flows one way: a lower layer of scratchllm never imports a higher one.

Read from the source (every ``import``/``from`` statement, lazy ones inside functions
included), so a forbidden import fails here even when no test happens to execute it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "scratchllm"

HIGHER = {"train", "finetune", "generate", "chat", "serve", "evaluate", "cli", "export"}
FORBIDDEN = {
    "model": HIGHER | {"weights", "data", "tokenizers"},
    "tokenizers": HIGHER | {"weights", "data", "model"},
    "data": HIGHER | {"weights"},
    "weights": HIGHER | {"data"},
}


def imported_packages(path: Path) -> set[str]:
    """The scratchllm sub-packages ``path`` imports (``scratchllm.X...`` -> ``X``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "scratchllm":  # from scratchllm import weights
                names.update(f"scratchllm.{a.name}" for a in node.names)
    return {n.split(".")[1] for n in names if n.startswith("scratchllm.") and n.count(".") >= 1}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_lower_layer_never_imports_a_higher_one(layer):
    files = sorted((SRC / layer).rglob("*.py"))
    assert files, f"no package {layer}"
    wrong = [f"{f.relative_to(SRC)} imports scratchllm.{pkg}"
             for f in files for pkg in sorted(imported_packages(f) & FORBIDDEN[layer])]
    assert not wrong, "; ".join(wrong)


def test_the_check_sees_lazy_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from scratchllm.data.chat_templates import x\n"
                     "import scratchllm.train.state\nfrom scratchllm import serve\n")
    assert imported_packages(probe) == {"data", "train", "serve"}
