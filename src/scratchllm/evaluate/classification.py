"""Classification metrics as plain functions: confusion matrix, accuracy, precision, recall, F1 (book 6.6).

The book reports accuracy only; on an unbalanced test set (87% ham) a model that always says
"ham" scores 87%, so per-class precision/recall/F1 and their macro averages are reported too.
A class that is never predicted (or never present) gets 0.0 instead of a division by zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from scratchllm.errors import DataError


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int],
                     num_classes: int) -> list[list[int]]:
    """``matrix[t][p]`` counts examples of true class t predicted as p."""
    if len(y_true) != len(y_pred):
        raise DataError(f"y_true has {len(y_true)} labels but y_pred {len(y_pred)}; pass one "
                        "prediction per example")
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(y_true, y_pred):
        t, p = int(t), int(p)
        if not (0 <= t < num_classes and 0 <= p < num_classes):
            raise DataError(f"label ids must be in [0, {num_classes}), got true={t} pred={p}")
        matrix[t][p] += 1
    return matrix


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def classification_report(y_true: Sequence[int], y_pred: Sequence[int],
                          labels: Sequence[str]) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, support and the confusion matrix."""
    k = len(labels)
    matrix = confusion_matrix(y_true, y_pred, k)
    total = sum(map(sum, matrix))
    per_class = {}
    for c, name in enumerate(labels):
        tp = matrix[c][c]
        predicted = sum(matrix[t][c] for t in range(k))
        actual = sum(matrix[c])
        precision, recall = _ratio(tp, predicted), _ratio(tp, actual)
        per_class[name] = {"precision": precision, "recall": recall,
                           "f1": _ratio(2 * precision * recall, precision + recall),
                           "support": actual}
    macro = {key: sum(v[key] for v in per_class.values()) / k
             for key in ("precision", "recall", "f1")}
    return {"accuracy": _ratio(sum(matrix[c][c] for c in range(k)), total),
            "n": total, "per_class": per_class, "macro": macro,
            "labels": list(labels), "confusion_matrix": matrix}


def format_report(report: dict) -> str:
    """A small text table of a ``classification_report`` for the terminal."""
    width = max(9, *(len(n) for n in report["labels"]))
    lines = [f"{'':<{width}}  precision  recall     f1  support"]
    for name, v in report["per_class"].items():
        lines.append(f"{name:<{width}}  {v['precision']:9.3f}  {v['recall']:6.3f}  "
                     f"{v['f1']:5.3f}  {v['support']:7d}")
    m = report["macro"]
    lines.append(f"{'macro':<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  "
                 f"{report['n']:7d}")
    lines.append(f"accuracy {report['accuracy'] * 100:.2f}%  confusion (rows=true, cols=pred): "
                 f"{report['confusion_matrix']}")
    return "\n".join(lines)


def is_report_file(path: Path) -> bool:
    """Whether ``path`` is empty or a report ``evaluate classification --out`` wrote (so a
    rerun may replace it; anything else is the user's and is refused)."""
    import json

    try:
        text = path.read_text(encoding="utf-8")
        value = json.loads(text) if text.strip() else {}
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(value, dict) and (not value or {"accuracy", "n", "per_class"} <= value.keys())
