"""Work functions behind Classify folder, Case report and Export heatmap (GUI workers and the CLI). No Qt."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xrayviewer.reports.ground_truth import ground_truth_labels
from xrayviewer.results import ResultRow

RowProgress = Callable[[dict], None]   # {"kind": "row", "row": ResultRow, "done": int, "total": int}


def classify_folder(classifier: Any, paths: Sequence[str | Path], *, lungs: Any = None,
                    progress: RowProgress | None = None, cancel: threading.Event | None = None) -> list[ResultRow]:
    """Every image through the model, ground truth from a manifest or the class folders, one progress event per
    row as it comes. A bad file is an error row and the run goes on; a cancel stops it and the rows so far stay."""
    from xrayviewer.model.batch import classify_paths

    paths = [Path(p) for p in paths]
    truth = ground_truth_labels(paths, classifier.classes)
    rows = []
    for row in classify_paths(classifier, paths, ground_truth=truth, lungs=lungs, cancel=cancel):
        rows.append(row)
        if progress is not None:
            progress({"kind": "row", "row": row, "done": len(rows), "total": len(paths)})
        if cancel is not None and cancel.is_set():
            break
    return rows


def load_lungs_if_available(path: str | Path | None = None) -> tuple[Any, str]:
    """(LungSegmenter, "") or (None, why not): lung attention is an extra, its absence never stops a run."""
    from xrayviewer.paths import LUNG_MODEL_DIR

    folder = Path(path) if path else LUNG_MODEL_DIR
    if not (folder / "model.json").is_file():
        return None, f"no lung model in {folder}"
    try:
        from xrayviewer.model.lungs import LungSegmenter

        return LungSegmenter.load(folder), ""
    except Exception as err:  # noqa: BLE001 - any failure to load the optional lung model is reported, not raised
        return None, str(err)


@dataclass
class FileAnalysis:
    """One image with what the model says about it, as a report or a heatmap export needs it."""

    radiograph: Any                 # Radiograph
    analysis: Any                   # classifier Analysis
    class_index: int                # the class the heatmap explains
    heatmap: np.ndarray             # 0..1; the image's size unless the caller passed a display-sized map
    lung_mask: np.ndarray | None = None
    lung_attention: float | None = None


def analyze_file(path: str | Path, classifier: Any, *, radiograph: Any = None, analysis: Any = None,
                 class_index: int | None = None, heatmap: np.ndarray | None = None, lungs: Any = None,
                 lung_mask: np.ndarray | None = None, lung_attention: float | None = None) -> FileAnalysis:
    """Compute only what the caller does not already have (the viewer passes what is on screen: its analysis,
    the heatmap of the method and class shown, the lung mask). Raises RadiographError for an unreadable file."""
    from xrayviewer.imaging import read_radiograph

    if radiograph is None:
        radiograph = read_radiograph(path)
    if analysis is None:
        analysis = classifier.analyze(radiograph)
    index = analysis.predicted_index if class_index is None else int(class_index)
    if heatmap is None:
        heatmap = analysis.heatmap(index, radiograph.shape)
    if lung_mask is None and lungs is not None:
        lung_mask = lungs.segment(radiograph)
    if lung_attention is None and lung_mask is not None:
        from xrayviewer.model.lungs import lung_attention as attention_share

        value = attention_share(heatmap, lung_mask)
        lung_attention = None if np.isnan(value) else float(value)
    return FileAnalysis(radiograph, analysis, index, heatmap, lung_mask, lung_attention)
