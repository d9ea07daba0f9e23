"""Labelled data for classification (book 6.2-6.3): reading, the book's numbers, padding, errors."""

from __future__ import annotations

import json

import pytest

from scratchllm.data.classification import (
    ClassificationDataset, LabelledData, Example, balance_classes, load_labelled_file,
    shuffle_split,
)
from scratchllm.errors import DataError, MissingFileError
from scratchllm.tokenizers import GPT2Tokenizer


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    return GPT2Tokenizer(shared_data / "gpt2")


@pytest.fixture(scope="module")
def spam_file(shared_data):
    return shared_data / "sms_spam_collection.tsv"


def test_spam_file_counts_and_book_split(spam_file):
    data = load_labelled_file(spam_file)
    assert data.labels == ["ham", "spam"]  # ham=0, spam=1 as in the book
    assert data.counts() == {"ham": 4827, "spam": 747}  # one message per line (README)
    balanced = balance_classes(data, seed=123)
    assert balanced.counts() == {"ham": 747, "spam": 747}  # book 6.2: 1494 in all
    train, val, test = shuffle_split(balanced, 0.7, 0.1, seed=123)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)  # book 6.2
    rows = [e.row for part in (train, val, test) for e in part.examples]
    assert len(set(rows)) == 1494  # a partition: nothing shared or lost
    spam_rows = {e.row for e in data.examples if e.label == 1}
    assert spam_rows <= set(rows)  # undersampling keeps every example of the rarest class


def test_book_split_reproduced_exactly(spam_file, tokenizer):
    """quoting=True parses like pandas.read_csv (4825 ham); with the same seed the sampling then
    picks the book's rows: the longest training text is the book's 120 tokens (6.3)."""
    data = load_labelled_file(spam_file, quoting=True)
    assert data.counts() == {"ham": 4825, "spam": 747}  # the book's value_counts()
    train, val, test = shuffle_split(balance_classes(data, 123), 0.7, 0.1, 123)
    train_ds = ClassificationDataset(train, tokenizer)
    assert train_ds.max_length == 120
    assert train.examples[0].text == "Dude how do you like the buff wind."
    assert train_ds[0][0].shape == (120,) and int(train_ds[0][1]) == 0


def test_seed_changes_selection(spam_file):
    data = load_labelled_file(spam_file)
    a = shuffle_split(balance_classes(data, 1), seed=1)[0]
    b = shuffle_split(balance_classes(data, 2), seed=2)[0]
    assert [e.row for e in a.examples] != [e.row for e in b.examples]
    again = shuffle_split(balance_classes(data, 1), seed=1)[0]
    assert [e.row for e in a.examples] == [e.row for e in again.examples]


def test_csv_and_jsonl_formats_and_label_order(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('id,body,tag\n1,"hello, world",pos\n2,bad day,neg\n', encoding="utf-8")
    data = load_labelled_file(csv_file, text_column="body", label_column="tag")
    assert data.labels == ["neg", "pos"]
    assert [(e.text, e.label, e.row) for e in data.examples] == [("hello, world", 1, 2),
                                                                  ("bad day", 0, 3)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"text": "a", "label": "x"},
                                                       {"text": "b", "label": "y"}]) + "\n")
    data = load_labelled_file(jsonl, labels=["y", "x"])  # given order wins
    assert [e.label for e in data.examples] == [1, 0]


@pytest.mark.parametrize("name, content, match", [
    ("a.tsv", "ham\thi\nspam no tab here\n", r"a\.tsv, row 2: .*no tab"),
    ("b.tsv", "ham\thi\nspam\t\n", r"b\.tsv, row 2: missing or empty text"),
    ("c.tsv", "ham\thi\nspma\tbuy\n", r"c\.tsv, row 2: unknown label 'spma'"),
    ("d.tsv", "", r"d\.tsv holds no labelled examples"),
    ("e.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"\n', r"e\.jsonl, row 2: not valid JSON"),
    ("f.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', r"f\.jsonl, row 2: missing .*label"),
    ("g.csv", "text,label\nhi,x\nhi,x,extra\n", r"g\.csv, row 3"),
    ("h.csv", "body,label\nhi,x\n", r"h\.csv, row 1: header has no 'text'"),
    ("i.xml", "ham\thi\n", r"cannot tell the format"),
])
def test_errors_name_file_and_row(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    labels = ["ham", "spam"] if name == "c.tsv" else None
    with pytest.raises(DataError, match=match):
        load_labelled_file(path, labels=labels)


def test_missing_file():
    with pytest.raises(MissingFileError):
        load_labelled_file("/nonexistent/spam.tsv")


def _data(*texts: str) -> LabelledData:
    return LabelledData([Example(t, i % 2, i + 1) for i, t in enumerate(texts)], ["a", "b"], "mem")


def test_dataset_pads_with_eot_and_truncates_only_when_asked(tokenizer):
    data = _data("Hello world", "A much longer text than the first one here")
    ds = ClassificationDataset(data, tokenizer)
    n_short = len(tokenizer.encode("Hello world"))
    n_long = len(tokenizer.encode(data.examples[1].text))
    assert ds.max_length == n_long and ds.lengths == [n_short, n_long]
    ids, label = ds[0]
    assert ids.tolist() == tokenizer.encode("Hello world") + [50256] * (n_long - n_short)
    assert int(label) == 0
    with pytest.raises(DataError, match=r"mem, row 2: text is \d+ tokens, longer than max_length 4"):
        ClassificationDataset(data, tokenizer, max_length=4)
    cut = ClassificationDataset(data, tokenizer, max_length=4, truncate=True)
    assert cut[1][0].tolist() == tokenizer.encode(data.examples[1].text)[:4]
    fixed = ClassificationDataset(data, tokenizer, max_length=20)
    assert fixed[0][0].shape == (20,)


def test_batches_trim_to_longest_row_and_shuffle_with_seed(tokenizer):
    data = _data("one", "two words", "three words here", "and four words here", "five")
    ds = ClassificationDataset(data, tokenizer, max_length=30)
    batches = list(ds.batches(2))
    assert [len(b.labels) for b in batches] == [2, 2, 1]
    assert batches[0].input_ids.shape == (2, max(ds.lengths[:2]))
    assert batches[0].lengths.tolist() == ds.lengths[:2]
    assert batches[0].input_ids[0, ds.lengths[0]:].eq(50256).all()
    assert len(list(ds.batches(2, drop_last=True))) == 2 == ds.num_batches(2, drop_last=True)
    order = [b.labels.tolist() for b in ds.batches(1, shuffle=True, seed=3)]
    assert order == [b.labels.tolist() for b in ds.batches(1, shuffle=True, seed=3)]
