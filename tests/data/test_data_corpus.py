"""prepare_corpus with the real GPT-2 tokenizer, checked against tiktoken built from vocab files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from scratchllm.data import TokenShard, prepare_corpus
from scratchllm.errors import ConfigError, DataError, MissingFileError

EOT = 50256
DOCS = [
    "First document.\nIt has two lines.\n",
    "Second: numbers 12345 and café, naïve – dashes…\n\n\nand blank lines.\n",
    "Third <|endoftext|> contains the separator text itself.",
    "  leading spaces\tand tabs\n",
]


@pytest.fixture(scope="module")
def reference(shared_data) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding built from the shared vocab files (independent of our code)."""
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(shared_data / "gpt2" / "vocab.bpe"),
        encoder_json_file=str(shared_data / "gpt2" / "encoder.json"),
    )
    return tiktoken.Encoding("gpt2-reference", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT})


def _ids(path) -> list[int]:
    return np.fromfile(path, dtype="<u2").tolist()


def _write_docs(folder, docs):
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (folder / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
    return folder


def test_small_files_match_tiktoken(tmp_path, reference):
    src = _write_docs(tmp_path / "src", DOCS)
    result = prepare_corpus([src], tmp_path / "out", val_fraction=0.0, workers=1)
    expected = [t for doc in DOCS for t in reference.encode(doc, allowed_special="all") + [EOT]]
    assert _ids(tmp_path / "out" / "train.bin") == expected
    assert result.num_tokens == {"train": len(expected), "val": 0}
    meta = json.loads((tmp_path / "out" / "train.json").read_text())
    assert meta["num_tokens"] == len(expected) and meta["dtype"] == "uint16"
    assert meta["sha256"] == hashlib.sha256((tmp_path / "out" / "train.bin").read_bytes()).hexdigest()
    assert len(meta["sources"]) == len(DOCS)
    from scratchllm.tokenizers import tokenizer_from_dict

    assert tokenizer_from_dict(meta["tokenizer"]).encode("Hello world") == [15496, 995]


def test_split_is_by_document_seeded_and_worker_independent(tmp_path, reference):
    docs = [f"Document number {i}.\n" + "Some words here. " * (i % 5 + 1) + "\n" for i in range(30)]
    src = _write_docs(tmp_path / "src", docs)
    encoded = [reference.encode_ordinary(d) + [EOT] for d in docs]
    runs = {}
    for name, seed, workers in [("a", 5, 1), ("b", 5, 2), ("c", 6, 1)]:
        prepare_corpus([src], tmp_path / name, val_fraction=0.2, seed=seed, workers=workers)
        runs[name] = (_ids(tmp_path / name / "train.bin"), _ids(tmp_path / name / "val.bin"))
    assert runs["a"] == runs["b"]  # worker processes change speed, not bytes
    assert runs["a"] != runs["c"]  # another seed picks other documents
    for train, val in runs.values():
        # Each split is whole documents in corpus order; together they are the corpus.
        is_val = _assign(encoded, train, val)
        assert 3 <= sum(is_val) <= 9  # about 20% of 30 similar-sized documents


def _assign(encoded, train, val) -> list[bool]:
    """Which documents went to val, proving both files are concatenations of whole documents."""
    flags, t, v = [], 0, 0
    for doc in encoded:
        if train[t : t + len(doc)] == doc:
            flags.append(False)
            t += len(doc)
        else:
            assert val[v : v + len(doc)] == doc
            flags.append(True)
            v += len(doc)
    assert t == len(train) and v == len(val)
    return flags


def test_tinyshakespeare_matches_tiktoken(shared_data, reference, tmp_path):
    path = shared_data / "tinyshakespeare.txt"
    expected = reference.encode_ordinary(path.read_text(encoding="utf-8"))
    prepare_corpus([path], tmp_path / "all", val_fraction=0.0, workers=2, chunk_bytes=1 << 17)
    assert _ids(tmp_path / "all" / "train.bin") == expected + [EOT]
    result = prepare_corpus([path], tmp_path / "split", val_fraction=0.1, workers=1)
    train = TokenShard(tmp_path / "split" / "train.bin", verify_checksum=True)
    val = TokenShard(tmp_path / "split" / "val.bin", verify_checksum=True)
    body = [t for t in np.concatenate([train.tokens, val.tokens]).tolist() if t != EOT]
    assert sorted(body) == sorted(expected)  # the same tokens, only regrouped
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert result.num_tokens == {"train": len(train), "val": len(val)}


def test_errors_are_clear_and_leave_no_partial_files(tmp_path):
    src = _write_docs(tmp_path / "src", DOCS)
    out = tmp_path / "out"
    prepare_corpus([src], out, val_fraction=0.0, workers=1)
    before = (out / "train.bin").read_bytes()
    (src / "doc99.txt").write_bytes(b"ok\n" * 10 + b"caf\xe9\n")
    with pytest.raises(ConfigError, match="--overwrite"):  # an earlier output needs --overwrite
        prepare_corpus([src], out, val_fraction=0.0, workers=1)
    with pytest.raises(DataError) as err:
        prepare_corpus([src], out, val_fraction=0.0, workers=1, overwrite=True)
    assert "doc99.txt" in str(err.value) and "byte offset 33" in str(err.value)
    assert (out / "train.bin").read_bytes() == before  # old output untouched
    assert sorted(p.name for p in out.iterdir()) == [".scratchllm", "train.bin", "train.json"]
    with pytest.raises(MissingFileError, match="nope.txt"):
        prepare_corpus([tmp_path / "nope.txt"], out)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        prepare_corpus([tmp_path / "empty.txt"], out)
    with pytest.raises(DataError, match="too small to split"):
        prepare_corpus([src / "doc00.txt"], out, val_fraction=0.1)
    with pytest.raises(ConfigError, match="is a file"):
        prepare_corpus([src], src / "doc00.txt")
    with pytest.raises(ConfigError, match="not written by scratchllm"):  # the user's own folder
        prepare_corpus([src], src)
    for bad in (dict(val_fraction=1.0), dict(val_fraction=-0.1), dict(workers=0)):
        with pytest.raises(ConfigError):
            prepare_corpus([src], out, **bad)


def test_progress_is_reported(tmp_path):
    src = _write_docs(tmp_path / "src", DOCS)
    seen = []
    prepare_corpus([src], tmp_path / "out", val_fraction=0.0, workers=1, progress=seen.append)
    assert [p.pieces_done for p in seen] == [1, 2, 3, 4]
    assert seen[-1].bytes_done == seen[-1].bytes_total == sum(len(d.encode()) for d in DOCS)
    assert seen[-1].tokens == TokenShard(tmp_path / "out" / "train.bin").meta["num_tokens"]
