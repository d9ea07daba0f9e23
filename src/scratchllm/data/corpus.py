"""Tokenize a corpus bigger than memory into flat ``train.bin`` / ``val.bin`` token files.

This is the large-scale version of book 2.6's "encode the whole text once": the same idea
as nanoGPT's ``prepare.py``. Input files are cut into pieces (see ``chunking``) that worker
processes tokenize in parallel; the main process streams the results, in order, into one
flat file of token ids per split, so memory stays bounded by a few pieces.

Splitting is by document: every piece (a whole file when the file is smaller than
``chunk_bytes``) goes entirely to train or to val, chosen by a seeded shuffle until val holds
about ``val_fraction`` of the bytes. The default 0.1 matches the book's 90/10 split; for
web-scale corpora something like nanoGPT's 0.0005 is plenty. An end-of-text token follows
each file (and each point where a file continues in the other split), so the model never
sees two documents glued together.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scratchllm.utils.outputs import PREPARED, check_output_dir, write_marker
from scratchllm.utils.atomic import atomic_directory, write_json
from scratchllm.data.chunking import Piece, read_piece, split_file
from scratchllm.data.sliding_window import separator_tokens
from scratchllm.data.text_files import find_text_files
from scratchllm.errors import ConfigError, DataError, TokenizerError

FORMAT = "scratchllm.tokens"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass
class PrepareProgress:
    """What has been done so far; passed to the ``progress`` callback after every piece."""

    pieces_done: int
    pieces_total: int
    files_total: int
    bytes_done: int
    bytes_total: int
    tokens: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes_done / 1e6 / max(self.seconds, 1e-9)


@dataclass
class PreparedCorpus:
    """Where the token files went and how big they are."""

    out_dir: Path
    files: list[Path]
    num_tokens: dict[str, int]
    bytes_read: int
    seconds: float
    dtype: str


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest little-endian unsigned type that holds every id: uint16 for GPT-2's 50257."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def auto_chunk_bytes(total_bytes: int) -> int:
    """About 256 pieces for small corpora (a usable val split), 1 MiB pieces for big ones."""
    return int(min(max(total_bytes // 256, 1024), 1 << 20))


def _name_files(paths: Any) -> str:
    """The first few distinct file names, for error messages about a whole corpus."""
    names = list(dict.fromkeys(str(p) for p in paths))
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def choose_val_pieces(pieces: list[Piece], val_fraction: float, seed: int) -> set[int]:
    """Indices of pieces for val: a seeded shuffle, taking pieces while that nears the target."""
    if val_fraction <= 0:
        return set()
    total = sum(p.nominal_bytes for p in pieces)
    target = val_fraction * total
    chosen: set[int] = set()
    taken = 0
    for i in np.random.default_rng(seed).permutation(len(pieces)).tolist():
        size = pieces[i].nominal_bytes
        if not chosen or abs(taken + size - target) <= abs(target - taken):
            chosen.add(i)
            taken += size
    if len(chosen) == len(pieces):
        raise DataError(
            f"corpus too small to split: {total} bytes ({_name_files(p.path for p in pieces)}) "
            f"make only {len(pieces)} piece(s) and all would go to val; give more text, or use "
            "val_fraction=0 (--val-fraction 0)"
        )
    return chosen


# Each worker process rebuilds the tokenizer once from its to_dict() spec.
_WORKER_TOKENIZER: Any = None


def _init_worker(spec: dict) -> None:
    global _WORKER_TOKENIZER
    from scratchllm.tokenizers import tokenizer_from_dict

    _WORKER_TOKENIZER = tokenizer_from_dict(spec)


def tokenize_piece(piece: Piece, search_bytes: int, dtype: str, eot_id: int | None,
                   tokenizer: Any = None) -> np.ndarray:
    """Read, decode and encode one piece; returns its ids (plus end-of-text when flagged)."""
    tokenizer = tokenizer if tokenizer is not None else _WORKER_TOKENIZER
    text = read_piece(piece, search_bytes)
    ids = tokenizer.encode(text, allowed_special=separator_tokens(tokenizer)) if text else []
    if piece.eot_after and eot_id is not None:
        ids = list(ids) + [eot_id]
    array = np.asarray(ids, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() > np.iinfo(dtype).max):
        raise TokenizerError(f"token id {int(array.max())} does not fit in {np.dtype(dtype).name}")
    return array.astype(dtype)


def _resolve_tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, str):
        from scratchllm.tokenizers import get_tokenizer

        return get_tokenizer(tokenizer)
    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "to_dict"):
        raise ConfigError(
            "tokenizer must be a name like 'gpt2' or a tokenizer with encode() and to_dict()"
        )
    return tokenizer


def _plan(files: list[Path], chunk_bytes: int | None, val_fraction: float, seed: int,
          eot: bool) -> tuple[list[Piece], list[str], int]:
    """Cut files into pieces, assign each to a split, mark where end-of-text tokens go."""
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    if total == 0:
        raise DataError(f"all {len(files)} input file(s) are empty ({_name_files(files)}); "
                        "give files that contain text")
    chunk = chunk_bytes or auto_chunk_bytes(total)
    pieces = [p for i, (f, size) in enumerate(zip(files, sizes)) if size
              for p in split_file(f, i, size, chunk)]
    val = choose_val_pieces(pieces, val_fraction, seed)
    splits = ["val" if i in val else "train" for i in range(len(pieces))]
    for i, piece in enumerate(pieces):
        last = i + 1 == len(pieces) or pieces[i + 1].file_index != piece.file_index
        pieces[i] = replace(piece, eot_after=eot and (last or splits[i + 1] != splits[i]))
    return pieces, splits, chunk


def _run_pieces(pieces: list[Piece], search: int, dtype: str, eot_id: int | None,
                tokenizer: Any, workers: int):
    """Yield each piece's token array in order, using ``workers`` processes when > 1."""
    if workers <= 1:
        for piece in pieces:
            yield tokenize_piece(piece, search, dtype, eot_id, tokenizer)
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker,
                             initargs=(tokenizer.to_dict(),)) as pool:
        pending: deque = deque()
        for piece in pieces:  # keep a bounded number of pieces in flight
            pending.append(pool.submit(tokenize_piece, piece, search, dtype, eot_id))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _swap_target(out: Path) -> Path:
    """The folder the new set replaces: for a symlinked ``--out``, the folder it points to (the
    user's link stays as it is and still leads to the data)."""
    return out.resolve() if out.is_symlink() else out


def _write_splits(folder: Path, pieces: list[Piece], splits: list[str], used: list[str],
                  stream: Any, files_total: int,
                  progress: Callable[[PrepareProgress], None] | None) -> tuple[dict, dict, dict]:
    """Stream every piece's ids into ``folder/{split}.bin``; (token counts, sha256, sources)."""
    handles = {s: open(folder / f"{s}.bin", "wb") for s in used}
    hashers = {s: hashlib.sha256() for s in used}
    counts = {s: 0 for s in used}
    sources: dict[str, list[str]] = {s: [] for s in used}
    total_bytes = sum(p.nominal_bytes for p in pieces)
    done_bytes, start = 0, time.perf_counter()
    try:
        for i, (piece, split, ids) in enumerate(zip(pieces, splits, stream)):
            data = ids.tobytes()
            handles[split].write(data)
            hashers[split].update(data)
            counts[split] += int(ids.size)
            if not sources[split] or sources[split][-1] != piece.path:
                sources[split].append(piece.path)
            done_bytes += piece.nominal_bytes
            if progress is not None:
                progress(PrepareProgress(i + 1, len(pieces), files_total, done_bytes, total_bytes,
                                         sum(counts.values()), time.perf_counter() - start))
        for handle in handles.values():
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        for handle in handles.values():
            handle.close()
    return counts, {s: h.hexdigest() for s, h in hashers.items()}, sources


def prepare_corpus(
    inputs: list[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any = "gpt2",
    val_fraction: float = 0.1,
    workers: int | None = None,
    seed: int = 1234,
    eot: bool = True,
    chunk_bytes: int | None = None,
    progress: Callable[[PrepareProgress], None] | None = None,
    overwrite: bool = False,
) -> PreparedCorpus:
    """Tokenize text files/directories into ``out_dir/{train,val}.bin`` plus JSON sidecars.

    Deterministic for a given (inputs, tokenizer, val_fraction, seed, chunk_bytes): the worker
    count changes only the speed. ``workers=None`` uses up to 8 CPU cores. ``out_dir`` must be
    new, empty, or an earlier ``prepare`` output replaced with ``overwrite`` (a folder holding
    anyone else's files is never touched).

    The set is one unit: it is written whole into a temp folder beside ``out_dir`` that then
    takes ``out_dir``'s place in one step (``utils.atomic.replace_directory``). Why: the four
    files belong together (a sidecar describes its ``.bin``, train and val share a tokenizer),
    so a run killed at any moment must leave the complete old set or the complete new one,
    never a mix that only a rerun can repair. A killed run's temp folder is removed by the next.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if chunk_bytes is not None and chunk_bytes < 1:
        raise ConfigError(f"chunk_bytes must be positive, got {chunk_bytes!r}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers!r}")
    workers = workers or min(os.cpu_count() or 1, 8)
    files = find_text_files(inputs)
    tokenizer = _resolve_tokenizer(tokenizer)
    eot_id = getattr(tokenizer, "eot_id", None)
    if eot and eot_id is None:
        raise ConfigError("this tokenizer has no end-of-text token; pass eot=False")
    dtype = token_dtype(int(tokenizer.vocab_size))
    pieces, splits, chunk = _plan(files, chunk_bytes, float(val_fraction), int(seed), eot)
    used = [s for s in SPLITS if s in splits]
    out = Path(out_dir).expanduser()
    check_output_dir(out, PREPARED, overwrite=overwrite)  # refuse before any work

    start = time.perf_counter()
    with atomic_directory(_swap_target(out)) as tmp:
        write_marker(tmp, PREPARED)
        stream = _run_pieces(pieces, chunk, dtype.str, eot_id, tokenizer, workers)
        counts, digests, sources = _write_splits(tmp, pieces, splits, used, stream, len(files),
                                                 progress)
        for split in used:
            write_json(tmp / f"{split}.json", {
                "format": FORMAT, "version": FORMAT_VERSION, "split": split,
                "dtype": dtype.name, "byte_order": "little", "num_tokens": counts[split],
                "sha256": digests[split], "tokenizer": tokenizer.to_dict(),
                "eot_id": eot_id if eot else None, "val_fraction": float(val_fraction),
                "seed": int(seed), "chunk_bytes": chunk, "sources": sorted(set(sources[split])),
            })
        # again at the swap: files the user put into out_dir meanwhile are never replaced
        check_output_dir(out, PREPARED, overwrite=overwrite)
    total_bytes = sum(p.nominal_bytes for p in pieces)
    return PreparedCorpus(out, files, {s: counts.get(s, 0) for s in SPLITS}, total_bytes,
                          time.perf_counter() - start, dtype.name)
