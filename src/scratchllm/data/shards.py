"""Reading token files written by ``prepare_corpus``: memory-mapped, verified, resumable.

``TokenShard`` maps a ``.bin`` file without loading it, after checking it against its JSON
sidecar (size always, SHA-256 on request), so a truncated or swapped file fails loudly
instead of training on garbage. ``ShardBatcher`` draws nanoGPT-style random windows; batch
``k`` depends only on ``(seed, k)``, so saving ``state_dict()`` resumes training exactly.
``ShardDataset`` offers the book's fixed sliding windows (book 2.6) over the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from scratchllm.data.corpus import FORMAT
from scratchllm.data.sliding_window import _check_positive, num_windows
from scratchllm.errors import ConfigError, DataError, MissingFileError
from scratchllm.utils.json_files import describe_json_error

_RERUN = "re-run `scratchllm prepare`"
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def _read_sidecar(meta_path: Path) -> dict:
    if not meta_path.is_file():
        raise MissingFileError(
            f"token file sidecar not found: {meta_path}; re-run `scratchllm prepare` to create it"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # bad UTF-8/JSON, huge ints, deep nesting
        raise DataError(f"{meta_path} is not valid JSON ({describe_json_error(err)}); "
                        f"{_RERUN}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_path} is not a scratchllm token sidecar; {_RERUN}")
    if meta.get("dtype") not in _DTYPES or not isinstance(meta.get("num_tokens"), int):
        raise DataError(f"{meta_path} has a bad dtype or num_tokens field; {_RERUN}")
    return meta


class TokenShard:
    """One flat token file (``train.bin``) and its sidecar (``train.json``), memory-mapped."""

    def __init__(self, path: str | os.PathLike, *, verify_checksum: bool = False) -> None:
        path = Path(path)
        self.path = path.with_suffix(".bin") if path.suffix in ("", ".json") else path
        self.meta_path = self.path.with_suffix(".json")
        self.verify_checksum = verify_checksum
        if not self.path.is_file():
            raise MissingFileError(
                f"token file not found: {self.path}; run `scratchllm prepare` first"
            )
        self.meta = _read_sidecar(self.meta_path)
        self.dtype = _DTYPES[self.meta["dtype"]]
        expected = self.meta["num_tokens"] * self.dtype.itemsize
        actual = self.path.stat().st_size
        if actual != expected:
            raise DataError(
                f"{self.path} is {actual} bytes but its sidecar promises {self.meta['num_tokens']} "
                f"{self.meta['dtype']} tokens = {expected} bytes (truncated or replaced?); "
                "re-run `scratchllm prepare`"
            )
        if verify_checksum:
            self.verify()
        self._open()

    def _open(self) -> None:
        if self.meta["num_tokens"]:
            self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        else:  # numpy cannot map an empty file
            self.tokens = np.zeros(0, dtype=self.dtype)

    def verify(self) -> None:
        """Recompute the file's SHA-256 and compare it with the sidecar's."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != self.meta.get("sha256"):
            raise DataError(
                f"{self.path} checksum mismatch: sha256 {digest.hexdigest()} but sidecar says "
                f"{self.meta.get('sha256')} (file corrupted or modified); {_RERUN}"
            )

    @property
    def tokenizer_spec(self) -> dict | None:
        return self.meta.get("tokenizer")

    @property
    def eot_id(self) -> int | None:
        return self.meta.get("eot_id")

    def __len__(self) -> int:
        return int(self.meta["num_tokens"])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` as an int64 array (a copy, safe to modify)."""
        return np.asarray(self.tokens[start : start + length], dtype=np.int64)

    def __getstate__(self) -> dict:  # pickle by path, not by copying the mapped data
        return {"path": self.path, "verify_checksum": False}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], verify_checksum=state["verify_checksum"])

    def __repr__(self) -> str:
        return f"TokenShard({str(self.path)!r}, num_tokens={len(self)}, dtype={self.meta['dtype']})"


def _as_shard(shard: TokenShard | str | os.PathLike) -> TokenShard:
    return shard if isinstance(shard, TokenShard) else TokenShard(shard)


def _need_tokens(shard: TokenShard, context_length: int) -> None:
    if len(shard) < context_length + 1:
        raise DataError(
            f"{shard.path} has {len(shard)} tokens but one window needs {context_length + 1} "
            f"(context_length={context_length} plus 1 for the shifted target); use a smaller "
            "context length or more text"
        )


class ShardDataset(Dataset):
    """Sliding (input, target) windows over a token file (book 2.6), for a DataLoader."""

    def __init__(self, shard: TokenShard | str | os.PathLike, context_length: int,
                 stride: int | None = None) -> None:
        self.shard = _as_shard(shard)
        self.context_length = _check_positive("context_length", context_length)
        self.stride = _check_positive("stride", stride if stride is not None else context_length)
        _need_tokens(self.shard, self.context_length)
        self._len = num_windows(len(self.shard), self.context_length, self.stride)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self._len <= index < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        chunk = torch.from_numpy(self.shard.read((index % self._len) * self.stride,
                                                 self.context_length + 1))
        return chunk[:-1], chunk[1:]


class ShardBatcher:
    """Endless random-window batches ``(x, y)`` of shape (batch_size, context_length), int64.

    Batch ``k`` uses offsets drawn from ``numpy.random.default_rng([seed, k])``, so the stream
    is fixed by the seed and resuming needs only the step counter (see ``state_dict``).
    ``device``: where to put batches (pinned + non-blocking copies for CUDA); default CPU.
    """

    def __init__(self, shard: TokenShard | str | os.PathLike, batch_size: int,
                 context_length: int, seed: int = 0, device: Any = None) -> None:
        self.shard = _as_shard(shard)
        self.batch_size = _check_positive("batch_size", batch_size)
        self.context_length = _check_positive("context_length", context_length)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.device = torch.device(device) if device is not None else None
        self.step = 0
        _need_tokens(self.shard, self.context_length)

    def offsets(self, step: int) -> np.ndarray:
        """Start positions of the windows in batch ``step`` (each window needs T + 1 tokens)."""
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.shard) - self.context_length, size=self.batch_size)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``step``, without moving the position."""
        index = self.offsets(step)[:, None] + np.arange(self.context_length + 1)
        windows = torch.from_numpy(np.asarray(self.shard.tokens[index], dtype=np.int64))
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        if self.device is not None and self.device.type != "cpu":
            if self.device.type == "cuda":
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return x, y

    def __iter__(self) -> "ShardBatcher":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.batch(self.step)
        self.step += 1
        return result

    def state_dict(self) -> dict:
        """Everything needed to continue the same batch stream (JSON-serialisable)."""
        return {"seed": self.seed, "step": self.step, "batch_size": self.batch_size,
                "context_length": self.context_length, "num_tokens": len(self.shard)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``; refuses a state saved for other settings or data."""
        mine_all = self.state_dict()
        for key in ("batch_size", "context_length", "num_tokens"):
            if key in state and state[key] != mine_all[key]:
                mine = mine_all[key]
                raise ConfigError(
                    f"batcher state has {key}={state[key]} but this batcher has {mine}; "
                    "resume with the same data and settings"
                )
        if not isinstance(state.get("step"), int) or state["step"] < 0:
            raise ConfigError(f"batcher state has a bad step {state.get('step')!r}")
        self.seed = int(state.get("seed", self.seed))
        self.step = state["step"]
