"""Metrics that show a weak class: per-class precision, recall and F1 with support, their macro means,
and balanced accuracy (the mean per-class recall), all from the confusion matrix.

Conventions as scikit-learn's: a class with no images in the split has no recall and is left out of
balanced accuracy and the macro means; a class never predicted has precision 0 (and so F1 0).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import torch
from pydantic import BaseModel


class ClassScores(BaseModel):
    name: str
    correct: int
    total: int  # support: the class's images in the split
    accuracy: float  # = recall: the share of the class's images called this class
    precision: float  # the share of the images called this class that are it
    recall: float
    f1: float


class Summary(BaseModel):
    balanced_accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float


def per_class_scores(confusion: torch.Tensor, names: Sequence[str]) -> list[ClassScores]:
    """``confusion[true, predicted]`` -> one row per class."""
    rows = []
    predicted = confusion.sum(0)
    for i, name in enumerate(names):
        total, called, correct = int(confusion[i].sum()), int(predicted[i]), int(confusion[i, i])
        recall = correct / total if total else 0.0
        precision = correct / called if called else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            ClassScores(
                name=name, correct=correct, total=total, accuracy=recall, precision=precision, recall=recall, f1=f1
            )
        )
    return rows


def summary(rows: Sequence[ClassScores]) -> Summary:
    present = [r for r in rows if r.total > 0] or list(rows)
    n = max(len(present), 1)
    return Summary(
        balanced_accuracy=sum(r.recall for r in present) / n,
        macro_precision=sum(r.precision for r in present) / n,
        macro_recall=sum(r.recall for r in present) / n,
        macro_f1=sum(r.f1 for r in present) / n,
    )


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """The mean recall over the classes that have images in the split."""
    total = confusion.sum(1).double()
    present = total > 0
    if not bool(present.any()):
        return 0.0
    return float((confusion.diagonal().double()[present] / total[present]).mean())


def per_class_csv(rows: Sequence[ClassScores]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["class", "support", "correct", "precision", "recall", "f1"])
    for r in rows:
        writer.writerow([r.name, r.total, r.correct, f"{r.precision:.6f}", f"{r.recall:.6f}", f"{r.f1:.6f}"])
    return buf.getvalue().encode()
