"""Labelled text for classification fine-tuning: read, balance, split, encode and pad (book 6.2-6.3).

Three file formats: TSV without a header (``label<TAB>text``, like the SMS Spam Collection),
CSV with a header (text/label columns), and JSONL (``{"text": ..., "label": ...}``).
Sampling uses numpy's ``RandomState(seed).choice(n, k, replace=False)``, the same draw as
pandas' ``DataFrame.sample(random_state=seed)``, so the book's recipe (undersample ham to
747, shuffle, 70/10/20) picks the same rows from the same table.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from scratchllm.errors import DataError, MissingFileError
from scratchllm.utils.json_files import describe_json_error

SPAM_LABELS = ("ham", "spam")  # the book's ids: ham=0, spam=1


@dataclass
class Example:
    text: str
    label: int          # index into the label names
    row: int = 0        # 1-based line/row in the source file, for error messages


@dataclass
class LabelledData:
    """Examples plus the label names their ids index (``labels[example.label]``)."""

    examples: list[Example]
    labels: list[str]
    source: str = "<memory>"

    def counts(self) -> dict[str, int]:
        found = Counter(e.label for e in self.examples)
        return {name: found.get(i, 0) for i, name in enumerate(self.labels)}

    def subset(self, examples: list[Example]) -> "LabelledData":
        return LabelledData(examples, self.labels, self.source)

    def __len__(self) -> int:
        return len(self.examples)


# ---------------------------------------------------------------------------- reading
def _rows_tsv(path: Path, quoting: bool) -> Iterator[tuple[int, dict[str, str]]]:
    """``label<TAB>text`` lines. quoting=True reads "..." fields like pandas.read_csv does
    (two SMS messages start with a quote and then swallow the next line: the book's 4825 ham)."""
    with open(path, encoding="utf-8", newline="") as handle:
        if quoting:
            reader = csv.reader(handle, delimiter="\t")
            for row in reader:
                line = reader.line_num
                if not row or row == [""]:
                    continue
                if len(row) != 2:
                    raise DataError(f"{path}, row {line}: expected 'label<TAB>text', got "
                                    f"{len(row)} field(s)")
                yield line, {"label": row[0], "text": row[1]}
            return
        for line, raw in enumerate(handle, start=1):
            raw = raw.rstrip("\r\n")
            if not raw.strip():
                continue
            if "\t" not in raw:
                raise DataError(f"{path}, row {line}: expected 'label<TAB>text', found no tab; "
                                "fix the line or convert the file to CSV with a header")
            label, text = raw.split("\t", 1)
            yield line, {"label": label, "text": text}


def _rows_csv(path: Path, text_column: str, label_column: str
              ) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for column in (text_column, label_column):
            if column not in columns:
                raise DataError(f"{path}, row 1: header has no {column!r} column (found "
                                f"{columns}); name the columns with text_column/label_column")
        for row in reader:
            line = reader.line_num
            if None in row or any(row.get(c) is None for c in (text_column, label_column)):
                raise DataError(f"{path}, row {line}: has {len(row)} fields, which does not "
                                f"match the header's {len(columns)}; quote fields with commas")
            yield line, {"text": row[text_column], "label": row[label_column]}


def _rows_jsonl(path: Path, text_column: str, label_column: str
                ) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, row {line}: not valid JSON ({err.msg})") from None
            except (ValueError, RecursionError) as err:  # huge integers, deep nesting
                raise DataError(f"{path}, row {line}: not usable JSON "
                                f"({describe_json_error(err)})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}, row {line}: expected a JSON object with "
                                f"{text_column!r} and {label_column!r}")
            yield line, {"text": record.get(text_column), "label": record.get(label_column)}


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    formats = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
    if suffix not in formats:
        raise DataError(f"cannot tell the format of {path} from its extension; use .tsv "
                        "(label<TAB>text), .csv (header with text,label) or .jsonl, or pass "
                        "file_format='tsv'|'csv'|'jsonl'")
    return formats[suffix]


def load_labelled_file(path: str | os.PathLike, *, file_format: str | None = None,
                       labels: Sequence[str] | None = None, text_column: str = "text",
                       label_column: str = "label", quoting: bool = False) -> LabelledData:
    """Read labelled texts; label ids follow ``labels`` (given order) or the sorted names.

    The SMS spam file gives ham=0, spam=1 either way, as in the book. Malformed rows, missing
    fields, labels not in ``labels`` and empty files raise a DataError naming file and row.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise MissingFileError(f"labelled data file {path} {what}; pass the .tsv, .csv or "
                               ".jsonl file itself")
    kind = file_format or detect_format(path)
    if kind == "tsv":
        rows = _rows_tsv(path, quoting)
    elif kind == "csv":
        rows = _rows_csv(path, text_column, label_column)
    elif kind == "jsonl":
        rows = _rows_jsonl(path, text_column, label_column)
    else:
        raise DataError(f"unknown file_format {kind!r}; use 'tsv', 'csv' or 'jsonl'")
    raw: list[tuple[int, str, str]] = []
    try:
        for line, row in rows:
            text, label = row.get("text"), row.get("label")
            for field, value in (("text", text), ("label", label)):
                if not isinstance(value, (str, int)) or isinstance(value, bool) or \
                        not str(value).strip():
                    raise DataError(f"{path}, row {line}: missing or empty {field}")
            if not isinstance(text, str):
                raise DataError(f"{path}, row {line}: text must be a string, got {text!r}")
            raw.append((line, text, str(label).strip()))
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from None
    except csv.Error as err:  # e.g. an unbalanced quote swallowing the rest of the file
        raise DataError(f"{path} is not a readable {kind.upper()} file ({err}); check its "
                        "quotes, or pass quoting=False for TSV") from None
    if not raw:
        raise DataError(f"{path} holds no labelled examples; it is empty")
    names = list(labels) if labels is not None else sorted({label for _, _, label in raw})
    index = {name: i for i, name in enumerate(names)}
    examples = []
    for line, text, label in raw:
        if label not in index:
            raise DataError(f"{path}, row {line}: unknown label {label!r}; expected one of "
                            f"{names}")
        examples.append(Example(text, index[label], line))
    if labels is None and len(names) < 2:
        raise DataError(f"{path} has only the label {names}; classification needs at least two")
    return LabelledData(examples, names, str(path))


# ---------------------------------------------------------------------------- balance, split
def _sample(n: int, k: int, seed: int) -> np.ndarray:
    """k of n indices without replacement: pandas' ``sample(k, random_state=seed)`` draw."""
    return np.random.RandomState(seed).choice(n, k, replace=False)


def balance_classes(data: LabelledData, seed: int = 123) -> LabelledData:
    """Undersample every class to the size of the smallest one (book 6.2: 747 ham + 747 spam).

    Classes are concatenated in label-id order, each a seeded random subset of its examples.
    """
    by_class = [[e for e in data.examples if e.label == i] for i in range(len(data.labels))]
    present = [group for group in by_class if group]
    smallest = min(len(group) for group in present)
    kept: list[Example] = []
    for group in present:
        if len(group) > smallest:
            group = [group[i] for i in _sample(len(group), smallest, seed)]
        kept.extend(group)
    return data.subset(kept)


def shuffle_split(data: LabelledData, train_frac: float = 0.7, val_frac: float = 0.1,
                  seed: int = 123) -> tuple[LabelledData, LabelledData, LabelledData]:
    """Shuffle, then cut into train/val/test; the test part gets the rest (book 6.2: 70/10/20).

    Sizes are ``int(n * frac)``, so 1494 examples give 1045/149/300 as in the book.
    """
    if not (0 < train_frac < 1 and 0 <= val_frac < 1 and train_frac + val_frac <= 1):
        raise DataError(f"split fractions must satisfy 0 < train ({train_frac}) and "
                        f"train + val ({val_frac}) <= 1")
    n = len(data.examples)
    order = _sample(n, n, seed)
    shuffled = [data.examples[i] for i in order]
    train_end = int(n * train_frac)
    val_end = train_end + int(n * val_frac)
    parts = shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:]
    if not parts[0]:
        raise DataError(f"{data.source}: {n} examples leave an empty training split; add data")
    return tuple(data.subset(p) for p in parts)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- dataset
@dataclass
class ClassificationBatch:
    """Right-padded token ids (B, T), the real length of each row (B,) and labels (B,)."""

    input_ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor


class ClassificationDataset(Dataset):
    """Encoded texts padded with the end-of-text id to one length (book 6.3).

    ``max_length=None`` pads to the longest example (the book's 120 tokens for its training
    split); a given ``max_length`` pads to it. Longer texts are an error unless
    ``truncate=True``, which keeps their first ``max_length`` tokens. ``dataset[i]`` is
    (ids of length ``max_length``, label) like the book's SpamDataset; ``batches()`` also
    yields real lengths and trims each batch to its own longest row.
    """

    def __init__(self, data: LabelledData, tokenizer: Any, *, max_length: int | None = None,
                 pad_id: int | None = None, truncate: bool = False) -> None:
        if not data.examples:
            raise DataError(f"{data.source}: no examples to encode")
        self.labels = list(data.labels)
        self.pad_id = tokenizer.eot_id if pad_id is None else int(pad_id)
        encoded = [tokenizer.encode(e.text) for e in data.examples]
        for example, ids in zip(data.examples, encoded):
            if not ids:
                raise DataError(f"{data.source}, row {example.row}: text encodes to no tokens")
            if max_length is not None and len(ids) > max_length and not truncate:
                raise DataError(
                    f"{data.source}, row {example.row}: text is {len(ids)} tokens, longer than "
                    f"max_length {max_length}; raise max_length or pass truncate=True "
                    "(--truncate) to keep the first tokens")
        self.max_length = max_length if max_length is not None else max(map(len, encoded))
        self.token_ids = [ids[: self.max_length] for ids in encoded]
        self.targets = [e.label for e in data.examples]
        self.rows = [e.row for e in data.examples]

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.token_ids]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.token_ids[index]
        padded = ids + [self.pad_id] * (self.max_length - len(ids))
        return torch.tensor(padded, dtype=torch.long), torch.tensor(self.targets[index])

    def collate(self, indices: Sequence[int]) -> ClassificationBatch:
        rows = [self.token_ids[i] for i in indices]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ClassificationBatch(ids, torch.tensor([len(r) for r in rows]),
                                   torch.tensor([self.targets[i] for i in indices]))

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> Iterator[ClassificationBatch]:
        """Batches in order (or a seeded permutation), each padded to its longest row.

        Padding to the batch instead of the dataset changes no prediction (the classifier reads
        each row's last real token) but skips most of the work for short texts.
        """
        if batch_size <= 0:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        order = (torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
                 if shuffle else torch.arange(len(self))).tolist()
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            yield self.collate(order[start:start + batch_size])

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)
