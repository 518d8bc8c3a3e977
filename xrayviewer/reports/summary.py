"""Accuracy, confusion matrix and per-class sensitivity/specificity of a folder run (pure, from ResultRows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from xrayviewer.results import ResultRow


@dataclass
class ClassFigures:
    label: str
    support: int                   # images whose ground truth is this class
    sensitivity: float | None      # recall: TP / (TP + FN); None without positives
    specificity: float | None      # TN / (TN + FP); None without negatives


@dataclass
class ResultsSummary:
    n_rows: int                    # every row, errors included
    n_errors: int
    n_scored: int                  # rows with a prediction and a ground truth
    n_correct: int
    labels: list[str]              # confusion-matrix order: model classes, then other ground-truth labels
    confusion: np.ndarray          # (len(labels), len(labels)) int, rows = ground truth, columns = predicted
    per_class: list[ClassFigures] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        return self.n_correct / self.n_scored if self.n_scored else None

    @property
    def has_ground_truth(self) -> bool:
        return self.n_scored > 0


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def summarize_results(rows: Iterable[ResultRow], classes: Sequence[str]) -> ResultsSummary:
    """One pass over the rows. Ground-truth labels the model does not know (e.g. "other") get a confusion row of
    their own and always count as wrong; error rows and rows without ground truth are left out of the figures."""
    rows = list(rows)
    scored = [r for r in rows if r.correct is not None]
    extra = sorted({r.ground_truth for r in scored} - set(classes))
    labels = list(classes) + extra
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for r in scored:
        if r.predicted in index:
            confusion[index[r.ground_truth], index[r.predicted]] += 1
    total = int(confusion.sum())
    per_class = []
    for label in classes:
        i = index[label]
        tp = int(confusion[i, i])
        fn = int(confusion[i].sum()) - tp
        fp = int(confusion[:, i].sum()) - tp
        tn = total - tp - fn - fp
        per_class.append(ClassFigures(label, tp + fn, _ratio(tp, tp + fn), _ratio(tn, tn + fp)))
    return ResultsSummary(n_rows=len(rows), n_errors=sum(1 for r in rows if r.error), n_scored=len(scored),
                          n_correct=sum(1 for r in scored if r.correct), labels=labels, confusion=confusion,
                          per_class=per_class)
