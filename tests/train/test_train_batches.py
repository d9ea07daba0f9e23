"""Resumable batches: seeded epoch permutations, exact skip-ahead, train/val splitting."""

from __future__ import annotations

import pytest
import torch

from scratchllm.data import SlidingWindowDataset
from scratchllm.errors import DataError, MissingFileError
from scratchllm.train.batches import WindowBatches, embedded_verdict_text, load_batches


def _windows(n_tokens: int = 105, length: int = 4) -> SlidingWindowDataset:
    return SlidingWindowDataset(torch.arange(n_tokens), length, length)


def test_each_epoch_visits_every_window_once_in_a_new_order():
    batches = WindowBatches(_windows(), 5, seed=1)   # 26 windows -> 5 full batches per epoch
    assert len(batches) == 5
    epochs = []
    for _ in range(2):
        starts = [int(s) for _ in range(5) for s in batches.next_batch()[0][:, 0]]
        assert len(set(starts)) == 25 and all(s % 4 == 0 for s in starts)
        epochs.append(starts)
    assert epochs[0] != epochs[1]
    assert batches.epoch == 1 and batches.epochs_done == 2.0


def test_targets_are_inputs_shifted_by_one():
    x, y = WindowBatches(_windows(), 3, seed=0).next_batch()
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)


def test_order_depends_only_on_seed_and_epoch():
    a, b = WindowBatches(_windows(), 5, seed=4), WindowBatches(_windows(), 5, seed=4)
    torch.manual_seed(99)  # the global RNG must not matter
    assert torch.equal(a.order(3), b.order(3))
    assert not torch.equal(a.order(3), WindowBatches(_windows(), 5, seed=5).order(3))


def test_resume_from_state_continues_the_same_stream():
    straight = WindowBatches(_windows(), 5, seed=2)
    expected = [straight.next_batch()[0] for _ in range(13)]
    first = WindowBatches(_windows(), 5, seed=2)
    for _ in range(7):
        first.next_batch()
    resumed = WindowBatches(_windows(), 5, seed=0)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(resumed.next_batch()[0], e) for e in expected[7:])


def test_state_from_other_data_is_refused():
    state = WindowBatches(_windows(), 5).state_dict()
    with pytest.raises(DataError, match="same data"):
        WindowBatches(_windows(205), 5).load_state_dict(state)


def test_validation_batches_keep_the_last_partial_batch():
    val = WindowBatches(_windows(), 5, shuffle=False, drop_last=False)
    sizes = [x.shape[0] for x, _ in val.first_batches(None)]
    assert sizes == [5, 5, 5, 5, 5, 1]
    assert [x.shape[0] for x, _ in val.first_batches(2)] == [5, 5]
    assert int(next(val.first_batches(1))[0][0, 0]) == 0


def test_too_few_windows_for_a_batch():
    with pytest.raises(DataError, match="smaller batch size"):
        WindowBatches(_windows(20), 8)


class _CharTokenizer:
    def encode(self, text, allowed_special=None):
        return [ord(c) % 256 for c in text]


def test_text_is_split_by_characters_like_the_book(tmp_path):
    text = embedded_verdict_text()
    assert len(text) == 20479 and text.startswith("I HAD always thought Jack Gisburn")
    path = tmp_path / "story.txt"
    path.write_text(text, encoding="utf-8")
    train, val, spec = load_batches(str(path), _CharTokenizer(), context_length=64, stride=64,
                                    batch_size=2, train_ratio=0.9, seed=0)
    split = int(0.9 * len(text))
    assert spec is None
    assert len(train.windows) == (split - 65) // 64 + 1
    first_val = next(val.first_batches(1))[0][0]
    assert "".join(map(chr, first_val.tolist())) == text[split:split + 64]


def test_data_errors(tmp_path):
    kwargs = dict(context_length=8, stride=8, batch_size=2, train_ratio=0.9, seed=0)
    with pytest.raises(MissingFileError, match="missing.txt"):
        load_batches(str(tmp_path / "missing.txt"), _CharTokenizer(), **kwargs)
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(DataError, match="empty"):
        load_batches(str(empty), _CharTokenizer(), **kwargs)
    short = tmp_path / "short.txt"
    short.write_text("x" * 50)
    with pytest.raises(DataError, match="validation split has 5 tokens"):
        load_batches(str(short), _CharTokenizer(), **kwargs)
