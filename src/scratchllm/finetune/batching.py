"""Which examples each fine-tuning step sees: a resumable, seeded epoch order.

A ``DataLoader`` over a shuffling sampler keeps its position inside a live iterator, which a
checkpoint cannot hold. Here the order is a pure function of (seed, epoch): epoch ``e``
(1-based) is ``torch.randperm`` drawn from a generator seeded with ``seed + e`` (the scheme
``ClassificationDataset.batches`` uses), and step ``s`` (0-based) takes batch ``s % steps per
epoch`` of epoch ``s // steps per epoch + 1``. The last partial batch of an epoch is dropped,
as the book's training loaders do (6.3, 7.3). Resuming therefore needs only the step count;
``position`` is saved too, to catch a checkpoint written with another batch size.
"""

from __future__ import annotations

import torch

from scratchllm.errors import CheckpointError, ConfigError, DataError


class EpochBatches:
    """Indices of the examples of every step (and its micro batches) over ``size`` examples."""

    def __init__(self, size: int, batch_size: int, *, seed: int, shuffle: bool = True) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if size < batch_size:
            raise DataError(f"only {size} training examples for batch size {batch_size}; use a "
                            "smaller --batch-size or more data")
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.steps_per_epoch = size // batch_size
        self._cached: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        """Example indices of ``epoch`` (1-based) in training order."""
        if self._cached is None or self._cached[0] != epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed + epoch)
                order = torch.randperm(self.size, generator=generator).tolist()
            else:
                order = list(range(self.size))
            self._cached = (epoch, order)
        return self._cached[1]

    def position(self, step: int) -> dict[str, int]:
        """``{"epoch", "batch"}`` (epoch 1-based, batch 0-based) of 0-based ``step``."""
        return {"epoch": step // self.steps_per_epoch + 1, "batch": step % self.steps_per_epoch}

    def indices(self, step: int) -> list[int]:
        """The examples of 0-based optimizer step ``step``."""
        where = self.position(step)
        start = where["batch"] * self.batch_size
        return self.order(where["epoch"])[start:start + self.batch_size]

    def micro_batches(self, step: int, micro_batch_size: int) -> list[list[int]]:
        """The step's examples cut into consecutive micro batches (gradient accumulation)."""
        chosen = self.indices(step)
        return [chosen[i:i + micro_batch_size] for i in range(0, len(chosen), micro_batch_size)]

    def state_dict(self, step: int) -> dict[str, int]:
        """What a checkpoint records about the data after ``step`` steps."""
        return {**self.position(step), "steps_per_epoch": self.steps_per_epoch,
                "batch_size": self.batch_size, "size": self.size, "seed": self.seed}

    def check_state(self, state: dict, step: int, where: str) -> None:
        """Refuse to resume when the saved data layout is not this one (other data or sizes)."""
        expected = self.state_dict(step)
        diffs = [f"{k}: saved {state.get(k)!r}, now {v!r}" for k, v in expected.items()
                 if state.get(k) != v]
        if diffs:
            raise CheckpointError(f"{where} was written for other training data ({'; '.join(diffs)});"
                                  " resume with the same data, --batch-size and --seed")
