"""Classification metrics against values computed by hand."""

from __future__ import annotations

import pytest

from scratchllm.errors import DataError
from scratchllm.evaluate.classification import (
    classification_report, confusion_matrix, format_report,
)


def test_binary_report_hand_computed():
    # true: 3 ham (0), 2 spam (1); predictions: ham ok, ham ok, ham->spam, spam ok, spam->ham
    y_true = [0, 0, 0, 1, 1]
    y_pred = [0, 0, 1, 1, 0]
    report = classification_report(y_true, y_pred, ["ham", "spam"])
    assert report["confusion_matrix"] == [[2, 1], [1, 1]]
    assert report["accuracy"] == pytest.approx(3 / 5)
    ham, spam = report["per_class"]["ham"], report["per_class"]["spam"]
    # ham: TP=2, FP=1 (spam predicted ham), FN=1 -> P=2/3, R=2/3, F1=2/3
    assert (ham["precision"], ham["recall"], ham["f1"], ham["support"]) == \
        pytest.approx((2 / 3, 2 / 3, 2 / 3, 3))
    # spam: TP=1, FP=1, FN=1 -> P=1/2, R=1/2, F1=1/2
    assert (spam["precision"], spam["recall"], spam["f1"], spam["support"]) == \
        pytest.approx((0.5, 0.5, 0.5, 2))
    assert report["macro"] == pytest.approx({"precision": 7 / 12, "recall": 7 / 12, "f1": 7 / 12})


def test_three_classes_and_never_predicted_class():
    y_true = [0, 1, 2, 2, 2, 1]
    y_pred = [0, 2, 2, 2, 0, 2]
    report = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 0, 2], [1, 0, 2]]
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"]) == pytest.approx((1 / 2, 1.0))
    assert a["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert (b["precision"], b["recall"], b["f1"]) == (0.0, 0.0, 0.0)  # never predicted: 0, no crash
    assert (c["precision"], c["recall"]) == pytest.approx((2 / 4, 2 / 3))
    assert c["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert report["accuracy"] == pytest.approx(3 / 6)
    assert report["macro"]["recall"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert "accuracy 50.00%" in format_report(report)


def test_all_one_class_predictor_on_unbalanced_data():
    """The case accuracy hides: 87% by always saying ham, spam recall 0."""
    y_true = [0] * 87 + [1] * 13
    report = classification_report(y_true, [0] * 100, ["ham", "spam"])
    assert report["accuracy"] == pytest.approx(0.87)
    assert report["per_class"]["spam"]["recall"] == 0.0
    assert report["macro"]["f1"] == pytest.approx((2 * 0.87 / 1.87) / 2)


def test_bad_input():
    with pytest.raises(DataError, match="one prediction per example"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], 2)


def test_only_an_earlier_report_may_be_replaced(tmp_path):
    """``evaluate classification --out``: an earlier report (or an empty file) is replaced,
    anything else is the user's and refused."""
    import json

    from scratchllm.evaluate.classification import is_report_file

    report = tmp_path / "report.json"
    report.write_text(json.dumps(classification_report([0, 1, 1], [0, 1, 0], ["ham", "spam"])))
    empty = tmp_path / "empty.json"
    empty.write_text("")
    mine = tmp_path / "mine.json"
    mine.write_text('{"accuracy": "my own notes"}')
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    assert is_report_file(report) and is_report_file(empty)
    assert not is_report_file(mine) and not is_report_file(listing)
