"""Token files: sidecar checks, memory-mapped reading, resumable random batches."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from scratchllm.data import ShardBatcher, ShardDataset, SlidingWindowDataset, TokenShard, prepare_corpus
from scratchllm.errors import ConfigError, DataError, MissingFileError


class CharTokenizer:
    """One id per character (ids = code points): expected token files are known by hand."""

    def __init__(self, vocab_size: int = 257, eot_id: int = 256) -> None:
        self.vocab_size, self.eot_id = vocab_size, eot_id

    def encode(self, text, allowed_special=frozenset()):
        return [ord(c) for c in text]

    def to_dict(self):
        return {"type": "char", "vocab_size": self.vocab_size}


TEXTS = {"a.txt": "hello world\n", "b.txt": "second doc\nwith two lines\n", "c.txt": "third\n"}


@pytest.fixture
def prepared(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in TEXTS.items():
        (src / name).write_text(text)
    out = tmp_path / "out"
    prepare_corpus([src], out, tokenizer=CharTokenizer(), val_fraction=0.0, workers=1)
    expected = [t for name in sorted(TEXTS) for t in [ord(c) for c in TEXTS[name]] + [256]]
    return out, expected


def test_prepare_writes_expected_tokens_and_sidecar(prepared):
    out, expected = prepared
    shard = TokenShard(out / "train.bin", verify_checksum=True)
    assert len(shard) == len(expected)
    assert shard.read(0, len(shard)).tolist() == expected
    assert np.fromfile(out / "train.bin", dtype="<u2").tolist() == expected  # flat little-endian
    meta = json.loads((out / "train.json").read_text())
    assert meta["dtype"] == "uint16" and meta["num_tokens"] == len(expected)
    assert meta["tokenizer"] == {"type": "char", "vocab_size": 257} and meta["eot_id"] == 256
    assert [p.rsplit("/", 1)[-1] for p in meta["sources"]] == sorted(TEXTS)
    assert not (out / "val.bin").exists()
    assert sorted(p.name for p in out.iterdir()) == [".scratchllm", "train.bin", "train.json"]


def test_large_vocab_uses_uint32(tmp_path):
    (tmp_path / "d.txt").write_text("ab\n")
    big = CharTokenizer(vocab_size=70_000, eot_id=69_999)
    big.encode = lambda text, allowed_special=None: [ord(c) + 65_000 for c in text]
    prepare_corpus([tmp_path / "d.txt"], tmp_path / "o", tokenizer=big, val_fraction=0.0, workers=1)
    shard = TokenShard(tmp_path / "o" / "train.bin")
    assert shard.meta["dtype"] == "uint32"
    assert shard.read(0, 4).tolist() == [65_097, 65_098, 65_010, 69_999]


def test_truncated_bin_is_refused_with_sizes(prepared):
    out, expected = prepared
    data = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(data[:-2])
    with pytest.raises(DataError) as err:
        TokenShard(out / "train.bin")
    message = str(err.value)
    assert f"{len(data) - 2} bytes" in message and f"{len(expected)} uint16 tokens" in message
    assert "scratchllm prepare" in message


def test_checksum_mismatch_is_refused(prepared):
    out, _ = prepared
    data = bytearray((out / "train.bin").read_bytes())
    data[4] ^= 1
    (out / "train.bin").write_bytes(bytes(data))
    TokenShard(out / "train.bin")  # same size: only the checksum can tell
    with pytest.raises(DataError, match="checksum mismatch"):
        TokenShard(out / "train.bin", verify_checksum=True)


def test_missing_or_bad_sidecar(prepared):
    out, _ = prepared
    with pytest.raises(MissingFileError, match="val.bin"):
        TokenShard(out / "val.bin")
    (out / "train.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        TokenShard(out / "train")  # a bare stem names the .bin/.json pair
    (out / "train.json").unlink()
    with pytest.raises(MissingFileError, match="train.json"):
        TokenShard(out / "train.bin")


def test_shard_pickles_by_path(prepared):
    out, expected = prepared
    shard = pickle.loads(pickle.dumps(TokenShard(out / "train.json")))
    assert isinstance(shard.tokens, np.memmap)
    assert shard.read(3, 5).tolist() == expected[3:8]


def test_shard_dataset_matches_sliding_window_dataset(prepared):
    out, expected = prepared
    ds, ref = ShardDataset(out / "train.bin", 5, stride=3), SlidingWindowDataset(expected, 5, 3)
    assert len(ds) == len(ref)
    for i in range(len(ds)):
        assert [t.tolist() for t in ds[i]] == [t.tolist() for t in ref[i]]
    with pytest.raises(DataError, match=f"has {len(expected)} tokens but one window needs"):
        ShardDataset(out / "train.bin", len(expected))


def test_batcher_windows_come_from_the_shard(prepared):
    out, expected = prepared
    batcher = ShardBatcher(out / "train.bin", batch_size=6, context_length=4, seed=3)
    x, y = next(batcher)
    assert x.shape == y.shape == (6, 4) and x.dtype == y.dtype == torch.int64
    for row, offset in zip(range(6), batcher.offsets(0)):
        assert x[row].tolist() == expected[offset : offset + 4]
        assert y[row].tolist() == expected[offset + 1 : offset + 5]
    assert batcher.step == 1


def test_batcher_reaches_both_ends(prepared):
    out, expected = prepared
    batcher = ShardBatcher(out / "train.bin", batch_size=64, context_length=len(expected) - 2)
    offsets = np.concatenate([batcher.offsets(k) for k in range(5)])
    assert set(offsets.tolist()) == {0, 1}  # N - T = 2 possible windows, both used
    with pytest.raises(DataError, match="one window needs"):
        ShardBatcher(out / "train.bin", batch_size=1, context_length=len(expected))


def test_batcher_is_seeded_and_resumes_exactly(prepared):
    out, _ = prepared
    run = lambda b, n: [tuple(t.tolist() for t in next(b)) for _ in range(n)]
    full = run(ShardBatcher(out / "train.bin", 4, 8, seed=11), 6)
    assert run(ShardBatcher(out / "train.bin", 4, 8, seed=11), 6) == full
    assert run(ShardBatcher(out / "train.bin", 4, 8, seed=12), 6) != full
    first = ShardBatcher(out / "train.bin", 4, 8, seed=11)
    run(first, 3)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = ShardBatcher(out / "train.bin", 4, 8, seed=0)
    resumed.load_state_dict(state)
    torch.manual_seed(123)
    np.random.seed(123)  # global RNGs must not matter
    assert run(resumed, 3) == full[3:]


def test_batcher_refuses_mismatched_state_and_bad_settings(prepared):
    out, _ = prepared
    state = ShardBatcher(out / "train.bin", 4, 8).state_dict()
    with pytest.raises(ConfigError, match="batch_size=4 but this batcher has 2"):
        ShardBatcher(out / "train.bin", 2, 8).load_state_dict(state)
    with pytest.raises(ConfigError):
        ShardBatcher(out / "train.bin", 0, 8)
    with pytest.raises(ConfigError):
        ShardBatcher(out / "train.bin", 2, 8, seed=-1)
