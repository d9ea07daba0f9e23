"""Cutting big text files into pieces that tokenize exactly like the whole file.

To tokenize a corpus bigger than memory in parallel, each file is cut into pieces of about
``chunk_bytes`` that workers read on their own. A cut must not change the tokens: GPT-2's
pre-tokenizer merges runs of whitespace, so cutting after ``"\\n\\n"`` or before ``" word"``
would. A cut right after a newline that sits between two visible ASCII characters
(``"x\\ny"``), or between the ``\\r`` and ``\\n`` of ``"x\\r\\ny"``, keeps every pre-token
intact. Both sides of a cut find it with the same function of (file, nominal offset), so the
pieces tile the file exactly; no piece needs to know about its neighbours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from scratchllm.data.text_files import decode_utf8

# A visible ASCII byte, then a newline before another visible byte, or a "\r" before "\n"+visible.
_SAFE_CUT = re.compile(rb"[\x21-\x7e](?:\n(?=[\x21-\x7e])|\r(?=\n[\x21-\x7e]))")
_BLOCK = 1 << 20
MIN_SEARCH_BYTES = 1 << 16  # how far to look for a safe cut before settling for any newline
MAX_LINE_BYTES = 16 << 20  # how far to look for any newline before cutting mid-line


@dataclass(frozen=True)
class Piece:
    """Bytes ``[nominal_start, nominal_end)`` of a file, moved to the next safe cut on each side."""

    path: str
    file_index: int
    index: int  # position of this piece within its file
    nominal_start: int
    nominal_end: int
    file_size: int
    eot_after: bool = False  # append the end-of-text token after this piece's tokens

    @property
    def nominal_bytes(self) -> int:
        return self.nominal_end - self.nominal_start


def split_file(path: Path, file_index: int, file_size: int, chunk_bytes: int) -> list[Piece]:
    """Nominal pieces of ``chunk_bytes`` covering a file (the last one may be shorter)."""
    count = max(1, -(-file_size // chunk_bytes))
    return [
        Piece(str(path), file_index, k, k * chunk_bytes,
              min((k + 1) * chunk_bytes, file_size), file_size)
        for k in range(count)
    ]


def find_cut(handle, pos: int, file_size: int, search_bytes: int) -> int:
    """First safe cut at or after ``pos``: where a piece boundary near ``pos`` really goes.

    Looks ``search_bytes`` (at least 64 KiB) ahead for a safe cut; failing that (very long
    lines), falls back to the next plain newline within ``MAX_LINE_BYTES``, and failing that
    (a file without newlines, e.g. minified JSON or binary data), to the first UTF-8 character
    start at or after ``pos``; tokens may then differ slightly at the cut. A piece therefore
    never grows past its nominal size plus ``MAX_LINE_BYTES``, however big the file.
    """
    if pos <= 0:
        return 0
    if pos >= file_size:
        return file_size
    search_bytes = max(search_bytes, MIN_SEARCH_BYTES)
    start = max(pos - 2, 0)
    handle.seek(start)
    window = handle.read(pos - start + search_bytes + 2)
    for match in _SAFE_CUT.finditer(window):
        cut = start + match.end()
        if cut >= pos:
            return cut
    # Fallback: just after the next newline, scanning block by block.
    offset = pos - 1
    handle.seek(offset)
    while offset < min(file_size, pos + MAX_LINE_BYTES):
        block = handle.read(_BLOCK)
        if not block:
            break
        hit = block.find(b"\n")
        if hit >= 0:
            return offset + hit + 1
        offset += len(block)
    if offset >= file_size:
        return file_size
    # No newline near: cut before the first byte that starts a UTF-8 character (not 10xxxxxx).
    handle.seek(pos)
    head = handle.read(4)
    skip = next((i for i, byte in enumerate(head) if byte & 0xC0 != 0x80), len(head))
    return min(pos + skip, file_size)


def read_piece(piece: Piece, search_bytes: int) -> str:
    """The decoded text of a piece, cut at safe boundaries; bad UTF-8 names file and offset."""
    with open(piece.path, "rb") as handle:
        start = find_cut(handle, piece.nominal_start, piece.file_size, search_bytes)
        end = (
            piece.file_size
            if piece.nominal_end >= piece.file_size
            else find_cut(handle, piece.nominal_end, piece.file_size, search_bytes)
        )
        if end <= start:
            return ""
        handle.seek(start)
        data = handle.read(end - start)
    return decode_utf8(data, piece.path, base_offset=start)
