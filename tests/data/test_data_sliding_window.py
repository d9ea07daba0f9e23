"""Sliding-window datasets and loaders (book 2.6), checked against the book's printed numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchllm.data import SlidingWindowDataset, create_dataloader, read_text_file, train_val_split
from scratchllm.errors import ConfigError, DataError

# Book 2.6, the-verdict.txt with batch_size=8, max_length=4, stride=4, no shuffling.
BOOK_INPUTS = [
    [40, 367, 2885, 1464], [1807, 3619, 402, 271], [10899, 2138, 257, 7026],
    [15632, 438, 2016, 257], [922, 5891, 1576, 438], [568, 340, 373, 645],
    [1049, 5975, 284, 502], [284, 3285, 326, 11],
]
BOOK_TARGETS = [
    [367, 2885, 1464, 1807], [3619, 402, 271, 10899], [2138, 257, 7026, 15632],
    [438, 2016, 257, 922], [5891, 1576, 438, 568], [340, 373, 645, 1049],
    [5975, 284, 502, 284], [3285, 326, 11, 287],
]


@pytest.fixture(scope="module")
def verdict(shared_data) -> str:
    return read_text_file(shared_data / "the-verdict.txt")


def test_book_first_batch_stride_4(verdict):
    loader = create_dataloader(verdict, batch_size=8, max_length=4, stride=4, shuffle=False)
    assert loader.dataset.token_ids.numel() == 5145  # book 2.6: 5145 tokens
    inputs, targets = next(iter(loader))
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.tolist() == BOOK_INPUTS
    assert targets.tolist() == BOOK_TARGETS


def test_book_first_two_batches_stride_1(verdict):
    loader = iter(create_dataloader(verdict, batch_size=1, max_length=4, stride=1, shuffle=False))
    first, second = next(loader), next(loader)
    assert [t.tolist() for t in first] == [[[40, 367, 2885, 1464]], [[367, 2885, 1464, 1807]]]
    assert [t.tolist() for t in second] == [[[367, 2885, 1464, 1807]], [[2885, 1464, 1807, 3619]]]


@pytest.mark.parametrize("n,max_length,stride", [(5, 4, 1), (9, 4, 2), (10, 4, 4), (13, 4, 4),
                                                 (14, 4, 4), (100, 7, 3), (8, 7, 100)])
def test_window_count_and_contents_match_brute_force(n, max_length, stride):
    ids = list(range(1000, 1000 + n))
    starts = [s for s in range(0, n, stride) if s + max_length + 1 <= n]  # independent count
    ds = SlidingWindowDataset(ids, max_length, stride)
    assert len(ds) == len(starts) == (n - max_length - 1) // stride + 1
    for i, s in enumerate(starts):
        x, y = ds[i]
        assert x.tolist() == ids[s : s + max_length]
        assert y.tolist() == ids[s + 1 : s + max_length + 1]  # target = input shifted by one
    assert ds[-1][0].tolist() == ids[starts[-1] : starts[-1] + max_length]
    with pytest.raises(IndexError):
        ds[len(starts)]


def test_verdict_window_count_hand_checked(verdict):
    # (5145 - 4 - 1) // 4 + 1 = 1286 windows; with batch 8 and drop_last: 1286 // 8 = 160 batches
    loader = create_dataloader(verdict, batch_size=8, max_length=4, stride=4, shuffle=False)
    assert len(loader.dataset) == 1286
    assert len(loader) == 160


def test_list_array_and_tensor_inputs_agree():
    ids = [5, 3, 9, 1, 4, 4, 8]
    sets = [SlidingWindowDataset(x, 3, 2) for x in (ids, np.array(ids, dtype=np.uint16),
                                                    torch.tensor(ids, dtype=torch.int32))]
    for i in range(len(sets[0])):
        assert sets[0][i][0].tolist() == sets[1][i][0].tolist() == sets[2][i][0].tolist()
        assert sets[2][i][1].dtype == torch.long


def test_too_short_names_both_sizes():
    with pytest.raises(DataError) as err:
        SlidingWindowDataset([1, 2, 3], max_length=4, stride=1)
    message = str(err.value)
    assert "3 tokens available" in message and "5 needed" in message
    assert "smaller max_length" in message
    with pytest.raises(DataError, match="0 tokens available"):
        SlidingWindowDataset([], max_length=4, stride=1)
    with pytest.raises(DataError, match="text is empty"):
        create_dataloader("", max_length=4, stride=4)


@pytest.mark.parametrize("kwargs", [dict(max_length=0, stride=1), dict(max_length=4, stride=0),
                                    dict(max_length=-2, stride=1), dict(max_length=2.5, stride=1)])
def test_bad_window_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError) as err:
        SlidingWindowDataset(list(range(20)), **kwargs)
    assert isinstance(err.value, ValueError)


def test_bad_token_arrays_raise_data_error():
    with pytest.raises(DataError, match="integers"):
        SlidingWindowDataset([0.5, 1.5, 2.5], 1, 1)
    with pytest.raises(DataError, match="1-D"):
        SlidingWindowDataset(torch.zeros(3, 4, dtype=torch.long), 1, 1)


def _batches(loader):
    return [(x.tolist(), y.tolist()) for x, y in loader]


def test_seeded_shuffle_is_reproducible_and_independent_of_global_rng():
    ids = list(range(200))
    make = lambda seed: create_dataloader(ids, batch_size=4, max_length=3, stride=3, seed=seed)
    torch.manual_seed(1)
    first = _batches(make(7))
    torch.manual_seed(999)  # the global RNG must not matter
    assert _batches(make(7)) == first
    assert _batches(make(8)) != first
    starts = [row[0] for x, _ in first for row in x]  # 66 windows, 16 full batches of 4
    assert len(set(starts)) == 64 and set(starts) <= set(range(0, 198, 3))
    assert starts != sorted(starts)
    ordered = [row[0] for x, _ in _batches(create_dataloader(ids, batch_size=4, max_length=3,
                                                            stride=3, shuffle=False)) for row in x]
    assert ordered == list(range(0, 3 * 64, 3))


def test_dataloader_too_few_windows_for_a_batch():
    with pytest.raises(DataError, match="batch_size=8"):
        create_dataloader(list(range(10)), batch_size=8, max_length=4, stride=4)
    loader = create_dataloader(list(range(10)), batch_size=8, max_length=4, stride=4,
                               drop_last=False, shuffle=False)
    assert [x.shape for x, _ in loader] == [torch.Size([2, 4])]  # starts 0 and 4


def test_train_val_split_like_the_book(verdict):
    train, val = train_val_split(verdict)
    assert len(verdict) == 20479  # book 2.1: total number of characters
    assert len(train) == int(0.9 * 20479) == 18431
    assert train + val == verdict
    ids = torch.arange(10)
    a, b = train_val_split(ids, train_ratio=0.7)
    assert a.tolist() == list(range(7)) and b.tolist() == [7, 8, 9]
    for ratio in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError):
            train_val_split(ids, train_ratio=ratio)
    with pytest.raises(DataError):
        train_val_split([1])


def test_tokenizer_object_or_name(verdict):
    from scratchllm.tokenizers import get_tokenizer

    for tokenizer in (get_tokenizer("gpt2"), "gpt2"):
        loader = create_dataloader(verdict[:200], tokenizer=tokenizer, batch_size=1, max_length=4,
                                   stride=4, shuffle=False)
        assert next(iter(loader))[0].tolist() == [BOOK_INPUTS[0]]
