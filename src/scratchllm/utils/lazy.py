"""Package exports imported on first use, so importing a package stays cheap.

``scratchllm.model`` and ``scratchllm.finetune`` re-export classes whose modules import
torch (about two seconds). A submodule such as ``scratchllm.model.config`` runs its
package's ``__init__`` first, so eager re-exports there made ``scratchllm --help`` (which
only needs preset names and option choices) pay for torch. With ``lazy_exports`` the
package's ``__getattr__`` (PEP 562) imports a name's module when the name is first read.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a name to its module."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later reads skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
