"""Reading the user's text files, with errors that say which file and which byte went wrong.

The book reads ``the-verdict.txt`` with a bare ``open(...).read()`` (book 2.1). Real corpora
contain missing paths, empty files and the odd Latin-1 file; each of those gets a
``scratchllm.errors`` exception naming the file (and, for bad encodings, the byte offset) so
the user can fix the data instead of reading a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from scratchllm.errors import DataError, MissingFileError

PathLike = str | os.PathLike


# Bigger files are not read whole into memory: `scratchllm prepare` streams them instead.
MAX_TEXT_BYTES = 256 << 20
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def decode_utf8(data: bytes, path: PathLike, base_offset: int = 0) -> str:
    """Decode UTF-8 bytes read from ``path``; a bad byte becomes a DataError with its offset.

    ``base_offset`` is where ``data`` starts inside the file, so chunked readers still report
    the absolute position of the first bad byte. A NUL byte is valid UTF-8 but never appears
    in text: it means a binary file, or UTF-16 text whose ASCII would otherwise slip through
    as letters interleaved with NULs, so it is refused too.
    """
    if base_offset == 0 and data.startswith(_UTF16_BOMS):
        raise DataError(f"{path} is UTF-16 text (it starts with a UTF-16 byte order mark); "
                        "re-save it as UTF-8 (e.g. `iconv -f utf-16 -t utf-8`)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = base_offset + err.start
        bad = data[err.start : err.start + 1].hex()
        raise DataError(
            f"{path} is not valid UTF-8: byte 0x{bad} at byte offset {offset} ({err.reason}); "
            "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(
            f"{path} holds a NUL byte at byte offset {base_offset + nul}, so it is a binary file "
            "or UTF-16/UTF-32 text, not UTF-8 text; convert it (e.g. `iconv -f utf-16 -t "
            "utf-8`) or leave it out"
        )
    return text


def check_readable_file(path: PathLike) -> Path:
    """Return ``path`` as a Path, or raise MissingFileError if it is not an existing file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a text file; pass a file path")
    if not path.is_file():
        raise MissingFileError(f"text file not found: {path}; check the path and spelling")
    return path


def read_text_file(path: PathLike, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """Read a whole UTF-8 text file (book 2.1), refusing missing, empty, binary or non-UTF-8
    files, and files over ``max_bytes`` (checked before reading, so a huge file costs nothing)."""
    path = check_readable_file(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(
            f"{path} is {size / 2**20:,.0f} MiB, more than the {max_bytes / 2**20:,.0f} MiB read "
            "into memory at once; tokenize it with `scratchllm prepare` and train on the "
            "prepared folder instead"
        )
    data = path.read_bytes()
    if not data:
        raise DataError(f"{path} is empty (0 bytes); give a file that contains text")
    return decode_utf8(data, path)


def find_text_files(inputs: list[PathLike] | tuple[PathLike, ...]) -> list[Path]:
    """Expand files and directories (searched recursively for ``*.txt``) into a file list.

    Files named directly are kept whatever their extension; each directory contributes its
    ``.txt`` files in sorted order so the result (and hence a prepared corpus) is reproducible.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise DataError(f"directory {path} contains no .txt files; add some or name files")
            files.extend(found)
        else:
            files.append(check_readable_file(path))
    if not files:
        raise DataError("no input files given; name at least one text file or directory")
    return files
