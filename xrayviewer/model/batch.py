"""Classify many files: read, batch through the compiled pass, one ResultRow per file in input order.

A file that cannot be read gives a row with its error and the run goes on. Only model-sized inputs are held per
batch (the decoded originals are let go right after preprocessing unless the caller keeps them), so a folder of
3000-px radiographs does not pile up in memory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from xrayviewer.imaging.radiograph import Radiograph
from xrayviewer.results import ResultRow

Progress = Callable[[dict], None]   # gets {"kind": "classify", "done": int, "total": int | None, "path": str}


@dataclass
class PathAnalysis:
    """One input file's outcome: the analysis, or the error text. `radiograph` only when the caller kept it."""

    path: Path | str                # str: kept as the caller spelled it (the viewer keys rows by it)
    analysis: Any = None            # classifier.Analysis
    radiograph: Radiograph | None = None
    lung_mask: np.ndarray | None = None
    error: str = ""


def read_error_text(err: Exception) -> str:
    """A one-line message for a file that could not be read (RadiographError messages are already readable)."""
    from xrayviewer.imaging.errors import RadiographError

    if isinstance(err, RadiographError):
        return str(err)
    if isinstance(err, MemoryError):
        return "not enough memory to decode this image"
    return f"cannot read this file ({type(err).__name__}: {err})"


def analyze_paths(classifier, paths: Iterable[str | Path], *, cams: bool = False, keep_radiographs: bool = False,
                  lungs=None, batch_size: int = 8, progress: Progress | None = None,
                  cancel: threading.Event | None = None) -> Iterator[PathAnalysis]:
    """Yield a PathAnalysis per path, in order, inference batched `batch_size` images at a time.

    cams: compute all-class Grad-CAM maps (nearly free; needed for heatmaps and lung attention).
    lungs: a LungSegmenter; each readable image gets its `lung_mask` (computed while the original is in memory).
    Stops quietly when `cancel` is set; rows already yielded stay valid.
    """
    from xrayviewer.imaging import read_radiograph

    total = len(paths) if hasattr(paths, "__len__") else None   # type: ignore[arg-type]
    pending: list[PathAnalysis] = []          # in input order, errors included
    inputs: list[np.ndarray] = []
    shapes: list[tuple[int, int]] = []
    done = 0

    def flush() -> Iterator[PathAnalysis]:
        nonlocal done
        readable = [item for item in pending if not item.error]
        if readable:
            analyses = classifier.analyze_inputs(np.stack(inputs), shapes, cams=cams)
            for item, analysis in zip(readable, analyses):
                item.analysis = analysis
        for item in pending:
            done += 1
            yield item
            if progress is not None:
                progress({"kind": "classify", "done": done, "total": total, "path": str(item.path)})
        pending.clear()
        inputs.clear()
        shapes.clear()

    for path in paths:
        if cancel is not None and cancel.is_set():
            return
        item = PathAnalysis(Path(path))
        try:
            radiograph = read_radiograph(path)
            inputs.append(classifier.model_input(radiograph))
            shapes.append(radiograph.shape)
        except Exception as err:  # any decoder failure becomes this file's error row, never the run's end
            item.error = read_error_text(err)
        else:
            if lungs is not None:
                try:
                    item.lung_mask = lungs.segment(radiograph)
                except Exception:  # no mask: lung attention stays empty for this file
                    item.lung_mask = None
            if keep_radiographs:
                item.radiograph = radiograph
            del radiograph
        pending.append(item)
        if len(inputs) >= batch_size:
            yield from flush()
    if pending and not (cancel is not None and cancel.is_set()):
        yield from flush()


def result_row(item: PathAnalysis, ground_truth: str = "") -> ResultRow:
    """THE conversion of one file's outcome into a ResultRow."""
    row = ResultRow(path=str(item.path), ground_truth=ground_truth, error=item.error)
    analysis = item.analysis
    if analysis is None:
        return row
    row.probabilities = analysis.probability_dict()
    row.predicted = analysis.predicted
    row.ood_score = analysis.ood_score
    row.ood_flag = bool(analysis.ood_flag)
    if item.lung_mask is not None and analysis.cams is not None:
        from xrayviewer.model.lungs import lung_attention

        attention = lung_attention(analysis.heatmap(shape=item.lung_mask.shape), item.lung_mask)
        row.lung_attention = None if np.isnan(attention) else attention
    return row


def _truth(ground_truth: Mapping[str, str] | Callable[[Path], str] | None, path: Path) -> str:
    if ground_truth is None:
        return ""
    if callable(ground_truth):
        return ground_truth(path) or ""
    return ground_truth.get(str(path)) or ground_truth.get(path) or ""  # type: ignore[call-overload]


def classify_paths(classifier, paths: Iterable[str | Path], *,
                   ground_truth: Mapping[str, str] | Callable[[Path], str] | None = None, lungs=None,
                   progress: Progress | None = None, cancel: threading.Event | None = None,
                   batch_size: int = 8) -> Iterator[ResultRow]:
    """One ResultRow per path, in order. Unreadable files give a row with `error`; the run goes on.

    ground_truth: {path: label} or a function path -> label. lungs: a LungSegmenter to fill lung_attention.
    """
    for item in analyze_paths(classifier, paths, cams=lungs is not None, lungs=lungs, batch_size=batch_size,
                              progress=progress, cancel=cancel):
        yield result_row(item, _truth(ground_truth, item.path))
