"""File names read from a model's own files, kept inside the model directory.

An index's shard names and a config's tokenizer file name are data from a download: a name
like ``../../home/me/.ssh/id_rsa``, ``/dev/zero`` or a symlink to either must not make the
loader open a file outside the directory. Names are checked before anything is opened.
"""

from __future__ import annotations

from pathlib import Path

from scratchllm.errors import CheckpointError

_FORBIDDEN = ("/", "\\", "\x00")


def contained_file(directory: Path, name: object, listed_in: Path, what: str = "file") -> Path:
    """``directory / name`` when ``name`` is a plain file name whose target stays inside.

    Symlinks may point within ``directory`` or, for a Hugging Face cache snapshot
    (``.../snapshots/REV``), into that repository's ``blobs/`` folder, where
    ``huggingface_hub`` keeps the real files. Anything else is a CheckpointError naming
    ``listed_in`` (the file that holds the name) and the name.
    """
    if (not isinstance(name, str) or name in ("", ".", "..")
            or any(char in name for char in _FORBIDDEN)):
        raise CheckpointError(f"{listed_in} names the {what} {name!r}, which is not a plain "
                              f"file name in {directory}; the file is damaged or malicious, "
                              "download it again")
    path = directory / name
    if path.is_symlink():
        target = path.resolve()
        roots = [directory.resolve()]
        if directory.parent.name == "snapshots":
            roots.append((directory.parent.parent / "blobs").resolve())
        if not any(target.is_relative_to(root) for root in roots):
            raise CheckpointError(f"{listed_in} names the {what} {name!r}, a link to {target} "
                                  f"outside {directory}; refusing to read it, copy the real "
                                  "file into the model directory")
    return path
