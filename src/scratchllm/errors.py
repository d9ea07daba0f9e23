"""One error family for everything scratchllm refuses to do.

Every message says what was wrong and what to do about it; the command line prints it as one
line on stderr (exit code 2) instead of a traceback. Subclasses also derive from the built-in
exception a Python caller would expect (``ValueError`` for bad values, ``FileNotFoundError``
for missing files), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class ScratchLLMError(Exception):
    """Base class: a problem with the user's input, files or environment."""


class ConfigError(ScratchLLMError, ValueError):
    """An invalid configuration value (names the field)."""


class TokenizerError(ScratchLLMError, ValueError):
    """Text or token ids a tokenizer cannot handle, or missing vocabulary files."""


class DataError(ScratchLLMError, ValueError):
    """Training or evaluation data that is empty, too short, unreadable or malformed."""


class ContextLengthError(ScratchLLMError, ValueError):
    """More tokens than the model's context window holds."""


class CheckpointError(ScratchLLMError):
    """A model directory or checkpoint that is missing, corrupted or does not match."""


class MissingFileError(ScratchLLMError, FileNotFoundError):
    """A file the user named (or that a command needs) does not exist."""
