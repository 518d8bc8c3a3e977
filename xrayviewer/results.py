"""One result row per image, shared by `predict --csv`, the results table and its CSV export (same columns)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


class ClassProbabilities:
    """`predicted_index`, `predicted` and `confidence` from `classes` and `probabilities` (one model output).

    Shared by the classifier's Analysis and the case report's findings.
    """

    classes: Sequence[str]
    probabilities: Sequence[float]

    @property
    def predicted_index(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def predicted(self) -> str:
        return self.classes[self.predicted_index]

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.predicted_index])


@dataclass
class ResultRow:
    path: str
    probabilities: dict[str, float] = field(default_factory=dict)   # class -> calibrated probability
    predicted: str = ""
    ground_truth: str = ""          # from the folder layout or a manifest; "" when unknown
    lung_attention: float | None = None   # share 0..1 of positive heatmap mass inside the lungs
    ood_score: float | None = None
    ood_flag: bool = False          # True: "not a chest X-ray?" — prediction unreliable
    error: str = ""                 # a person-readable message; "" when fine

    @property
    def correct(self) -> bool | None:
        if self.error or not self.ground_truth or not self.predicted:
            return None
        return self.ground_truth == self.predicted

    @property
    def confidence(self) -> float:
        return max(self.probabilities.values()) if self.probabilities else float("nan")


def csv_columns(classes: Sequence[str]) -> list[str]:
    return (["path", "predicted"] + [f"p_{c}" for c in classes]
            + ["ground_truth", "correct", "lung_attention", "ood_score", "ood_flag", "error"])


def _fmt(value: float | None, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def row_to_csv(row: ResultRow, classes: Sequence[str]) -> list[str]:
    correct = row.correct
    return ([row.path, row.predicted] + [_fmt(row.probabilities.get(c)) for c in classes]
            + [row.ground_truth, "" if correct is None else str(correct).lower(), _fmt(row.lung_attention, 4),
               _fmt(row.ood_score, 4), "true" if row.ood_flag else "", row.error])


def write_results_csv(rows: Iterable[ResultRow], out: str | Path | None, classes: Sequence[str], stream=None) -> int:
    """Write rows (to `out`, or to an open text `stream`). Returns the number of rows."""
    n = 0
    f = stream if stream is not None else open(out, "w", newline="", encoding="utf-8")
    try:
        writer = csv.writer(f)
        writer.writerow(csv_columns(classes))
        for row in rows:
            writer.writerow(row_to_csv(row, classes))
            n += 1
            f.flush()  # rows so far survive a cancel or crash
    finally:
        if stream is None:
            f.close()
    return n


def read_results_csv(path: str | Path) -> tuple[list[str], list[ResultRow]]:
    """Inverse of write_results_csv: (classes, rows)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        classes = [c[2:] for c in (reader.fieldnames or []) if c.startswith("p_")]
        rows = []
        for r in reader:
            probs = {c: float(r[f"p_{c}"]) for c in classes if r.get(f"p_{c}")}
            rows.append(ResultRow(path=r["path"], probabilities=probs, predicted=r["predicted"],
                                  ground_truth=r.get("ground_truth", ""),
                                  lung_attention=float(r["lung_attention"]) if r.get("lung_attention") else None,
                                  ood_score=float(r["ood_score"]) if r.get("ood_score") else None,
                                  ood_flag=r.get("ood_flag") == "true", error=r.get("error", "")))
    return classes, rows
