"""Training and evaluation batches whose position can be saved and restored exactly (book 5.1-5.2).

A PyTorch DataLoader cannot say "continue from batch 7 of epoch 3". ``WindowBatches`` can: the
order of every epoch is a permutation drawn from ``(seed, epoch)`` alone, so its state is two
integers. Big corpora prepared by ``scratchllm prepare`` go through the data package's
``ShardBatcher`` (random windows, also resumable), wrapped here behind the same interface.

Under multi-process training (``rank``/``world_size``) every rank walks the same sequence of
*global* micro batches of ``batch_size * world_size`` rows and keeps rows ``rank::world_size``.
The ranks' shares are disjoint, together they are exactly what one process with a
``world_size`` times larger micro batch would see, and the saved position is the same on
every rank.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from scratchllm.data import ShardBatcher, ShardDataset, SlidingWindowDataset, TokenShard
from scratchllm.data import read_text_file, train_val_split
from scratchllm.data.sliding_window import separator_tokens
from scratchllm.errors import DataError, MissingFileError

Batch = tuple[torch.Tensor, torch.Tensor]


class WindowBatches:
    """Batches of sliding windows; shuffled per epoch by a private, seeded generator.

    Like the book's train loader (shuffle=True, drop_last=True) or, with ``shuffle=False,
    drop_last=False``, its validation loader.
    """

    def __init__(self, windows: Any, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.windows = windows
        self.batch_size = batch_size  # rows per batch on this rank
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.batch_index = 0
        if len(self) == 0:
            raise DataError(f"only {len(windows)} training windows, fewer than one batch of "
                            f"{batch_size * world_size}; use a smaller batch size or context "
                            "length, or more text")

    def __len__(self) -> int:
        """Batches per epoch (global micro batches: the same count on every rank)."""
        full, rest = divmod(len(self.windows), self.batch_size * self.world_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int) -> torch.Tensor:
        """Window indices of ``epoch`` in visiting order (depends only on seed and epoch)."""
        if not self.shuffle:
            return torch.arange(len(self.windows))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.windows), generator=generator)

    def batch(self, epoch: int, index: int) -> Batch:
        size = self.batch_size * self.world_size
        rows = self.order(epoch)[index * size:(index + 1) * size][self.rank::self.world_size]
        pairs = [self.windows[int(i)] for i in rows]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def next_batch(self) -> Batch:
        """The next batch, moving to the next epoch after the last one."""
        if self.batch_index >= len(self):
            self.epoch, self.batch_index = self.epoch + 1, 0
        result = self.batch(self.epoch, self.batch_index)
        self.batch_index += 1
        return result

    def first_batches(self, n: int | None) -> Iterator[Batch]:
        """The first ``n`` batches in fixed order (no shuffle, no rank split): a stable loss estimate."""
        size = self.batch_size
        full, rest = divmod(len(self.windows), size)
        available = full + (1 if rest and not self.drop_last else 0)
        count = available if n is None else min(n, available)
        for index in range(count):
            pairs = [self.windows[i] for i in range(index * size, min((index + 1) * size, len(self.windows)))]
            yield torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.batch_index / len(self)

    def state_dict(self) -> dict:
        return {"kind": "windows", "epoch": self.epoch, "batch_index": self.batch_index,
                "seed": self.seed, "num_windows": len(self.windows), "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "windows" or state.get("num_windows") != len(self.windows):
            raise DataError(f"the checkpoint's data position {state} does not fit this data "
                            f"({len(self.windows)} windows); resume with the same data and settings")
        _check_world_size(state, self.world_size)
        self.epoch, self.batch_index, self.seed = state["epoch"], state["batch_index"], state["seed"]


class ShardBatches:
    """``ShardBatcher`` random windows behind the ``WindowBatches`` interface.

    With several ranks the batcher draws global batches of ``batch_size * world_size`` windows
    and this rank reads only its rows ``rank::world_size``.
    """

    def __init__(self, shard: TokenShard, batch_size: int, context_length: int, seed: int,
                 *, rank: int = 0, world_size: int = 1) -> None:
        self.batcher = ShardBatcher(shard, batch_size * world_size, context_length, seed)
        self.eval_windows = ShardDataset(shard, context_length)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.tokens_per_epoch = len(shard)

    def __len__(self) -> int:
        return max(1, self.tokens_per_epoch
                   // (self.batch_size * self.world_size * self.batcher.context_length))

    def next_batch(self) -> Batch:
        if self.world_size == 1:
            return next(self.batcher)
        starts = self.batcher.offsets(self.batcher.step)[self.rank::self.world_size]
        self.batcher.step += 1
        index = starts[:, None] + np.arange(self.batcher.context_length + 1)
        windows = torch.from_numpy(np.asarray(self.batcher.shard.tokens[index], dtype=np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def first_batches(self, n: int | None) -> Iterator[Batch]:
        return WindowBatches(self.eval_windows, self.batch_size, shuffle=False,
                             drop_last=False).first_batches(n)

    @property
    def epochs_done(self) -> float:
        return self.batcher.step / len(self)

    @property
    def epoch(self) -> int:
        return int(self.epochs_done)

    def state_dict(self) -> dict:
        return {"kind": "shard", "world_size": self.world_size, **self.batcher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "shard":
            raise DataError("the checkpoint was trained on text windows, not a token file; "
                            "resume with the same data")
        _check_world_size(state, self.world_size)
        self.batcher.load_state_dict({k: v for k, v in state.items()
                                      if k not in ("kind", "world_size")})


def _check_world_size(state: dict, world_size: int) -> None:
    """A data position counts global batches of one world size; another would skip or repeat data."""
    saved = state.get("world_size", 1)
    if saved != world_size:
        raise DataError(f"the checkpoint was written by a run with {saved} process(es) but this "
                        f"run has {world_size}; resume with {saved} in total (torchrun --nnodes "
                        "x --nproc_per_node), or start a new run")


def embedded_verdict_text() -> str:
    """The short story *The Verdict* (Edith Wharton, 1908) shipped with the package (book 2.1)."""
    return resources.files("scratchllm").joinpath("assets/the-verdict.txt").read_text(encoding="utf-8")


def is_prepared(path: Path) -> bool:
    return path.suffix == ".bin" or path.is_dir()


def text_batches(text: str, tokenizer: Any, *, context_length: int, stride: int, batch_size: int,
                 train_ratio: float, seed: int, rank: int = 0,
                 world_size: int = 1) -> tuple[WindowBatches, WindowBatches]:
    """Split the text by characters like the book (5.1.3), then window and batch each part."""
    if not text.strip():
        raise DataError("the training text is empty; give a file with some text in it")
    train_text, val_text = train_val_split(text, train_ratio)
    splits = []
    for name, part in (("training", train_text), ("validation", val_text)):
        ids = tokenizer.encode(part, allowed_special=separator_tokens(tokenizer))
        if len(ids) < context_length + 1:
            raise DataError(f"the {name} split has {len(ids)} tokens, fewer than one window of "
                            f"context_length+1 = {context_length + 1}; use a smaller context "
                            "length, a different train_ratio, or more text")
        splits.append(SlidingWindowDataset(ids, context_length, stride))
    return (WindowBatches(splits[0], batch_size, seed=seed, rank=rank, world_size=world_size),
            WindowBatches(splits[1], batch_size, shuffle=False, drop_last=False))


def shard_batches(path: Path, *, context_length: int, batch_size: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> tuple[ShardBatches, WindowBatches, dict | None]:
    """Batches from ``train.bin``/``val.bin`` written by ``scratchllm prepare``."""
    train_path = path / "train.bin" if path.is_dir() else path
    val_path = train_path.with_name("val.bin")
    if not val_path.is_file():
        raise MissingFileError(f"validation tokens {str(val_path)!r} not found next to "
                               f"{str(train_path)!r}; run `scratchllm prepare` to write both")
    train_shard, val_shard = TokenShard(train_path), TokenShard(val_path)
    val = WindowBatches(ShardDataset(val_shard, context_length), batch_size,
                        shuffle=False, drop_last=False)
    train = ShardBatches(train_shard, batch_size, context_length, seed, rank=rank,
                         world_size=world_size)
    return train, val, train_shard.tokenizer_spec


def load_batches(data: str | None, tokenizer: Any, *, context_length: int, stride: int,
                 batch_size: int, train_ratio: float, seed: int, rank: int = 0,
                 world_size: int = 1):
    """(train, val, tokenizer spec or None) for a text file, a prepared token file/folder or None.

    ``batch_size`` is per rank; the training batches are split across ``world_size`` ranks.
    """
    shares = dict(rank=rank, world_size=world_size)
    if data is None:
        return (*text_batches(embedded_verdict_text(), tokenizer, context_length=context_length,
                              stride=stride, batch_size=batch_size, train_ratio=train_ratio,
                              seed=seed, **shares), None)
    path = Path(data)
    if not path.exists():
        raise MissingFileError(f"training data {str(path)!r} not found; give a text file, a "
                               "prepared .bin file or folder, or leave data unset for the built-in story")
    if is_prepared(path):
        return shard_batches(path, context_length=context_length, batch_size=batch_size,
                             seed=seed, **shares)
    try:
        batches = text_batches(read_text_file(path), tokenizer, context_length=context_length,
                               stride=stride, batch_size=batch_size, train_ratio=train_ratio,
                               seed=seed, **shares)
    except DataError as err:  # "the training split is too short" must say which file
        raise DataError(err if str(path) in str(err) else f"{path}: {err}") from None
    return (*batches, None)
