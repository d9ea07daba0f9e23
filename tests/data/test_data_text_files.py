"""Reading user text files: missing, empty and non-UTF-8 files get errors that name them."""

from __future__ import annotations

import pytest

from scratchllm.data import find_text_files, read_text_file
from scratchllm.errors import DataError, MissingFileError


def test_reads_the_verdict(shared_data):
    text = read_text_file(shared_data / "the-verdict.txt")
    assert len(text) == 20479  # book 2.1: "Total number of character: 20479"
    assert text.startswith("I HAD always thought Jack Gisburn")


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(MissingFileError) as err:
        read_text_file(path)
    assert isinstance(err.value, FileNotFoundError)
    assert str(path) in str(err.value)


def test_non_utf8_reports_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf".encode() + b"\xe9 au lait\n")
    with pytest.raises(DataError) as err:
        read_text_file(path)
    assert str(path) in str(err.value) and "byte offset 3" in str(err.value)
    assert "0xe9" in str(err.value) and "UTF-8" in str(err.value)


def test_real_latin1_file_offset(shared_data):
    # The shared SMS readme is Latin-1 (see shared/data/README.md): its first non-ASCII byte is
    # a lone accented letter, which is where UTF-8 decoding must fail.
    path = shared_data / "sms_spam_collection_readme.txt"
    data = path.read_bytes()
    first = next(i for i, byte in enumerate(data) if byte >= 0x80)
    assert data[first + 1] < 0x80  # not followed by a continuation byte
    with pytest.raises(DataError) as err:
        read_text_file(path)
    assert f"byte offset {first} " in str(err.value) and path.name in str(err.value)


def test_empty_file_and_directory(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.txt is empty"):
        read_text_file(empty)
    with pytest.raises(DataError, match="directory"):
        read_text_file(tmp_path)


def test_find_text_files_expands_directories_sorted(tmp_path):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    for name in ("corpus/b.txt", "corpus/a.txt", "corpus/sub/c.txt", "corpus/skip.md", "notes.text"):
        (tmp_path / name).write_text("x")
    found = find_text_files([tmp_path / "corpus", tmp_path / "notes.text"])
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["corpus/a.txt", "corpus/b.txt", "corpus/sub/c.txt", "notes.text"]
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        find_text_files([tmp_path / "none"])
    with pytest.raises(MissingFileError, match="missing.txt"):
        find_text_files([tmp_path / "missing.txt"])
