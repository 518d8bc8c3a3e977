"""Model › Audit… and the Audit tab of the training results: the shortcut audit (xrayviewer.model.audit) in a worker.

Does the model look at the lungs, or at the hospital? The audit reads each image, computes the Grad-CAM and the lung
mask, and predicts again with the lungs blacked out and with only the lungs left. This module shows it running
(progress, current file, Cancel) and then its headline numbers, a plain-language verdict, summary.md and the figures.
TensorFlow (loading the models, the audit itself) runs only in the `Worker`; the GUI thread lays out what comes back.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np
from PySide6.QtCore import QObject, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (QDialog, QFileDialog, QFormLayout, QGridLayout, QHBoxLayout, QLabel, QLineEdit,
                               QMessageBox, QProgressBar, QPushButton, QSpinBox, QTabWidget, QTextBrowser,
                               QVBoxLayout, QWidget)

from xrayviewer.ui.figures import FigureColours, FigureView, render_figure, theme_figure
from xrayviewer.ui.formatting import format_duration, format_number
from xrayviewer.ui.workers import LatestRequest, Worker, check_cancel, start_worker

# Measured pace of the audit on a 2-core machine (read, lungs, Grad-CAM pass, two masked passes): 0.33 s an image
# with a 224x224 model, 0.45 s with the shipped 336x336 one. The passes scale with the input's pixels, the rest not.
# That machine ran the compiled pass in REFERENCE_PASS_SECONDS_PER_224_SQUARE per 224² of input (154 ms at 336²);
# elsewhere the estimate scales by the pass time the classifier measured there (machine_slowness).
SECONDS_PER_IMAGE = 0.235
SECONDS_PER_IMAGE_PER_224_SQUARE = 0.098
REFERENCE_PASS_SECONDS_PER_224_SQUARE = 0.0684
MODEL_LOAD_SECONDS = 10        # loading a classifier and the lung model when the viewer has none ready
DEFAULT_LIMIT = 30
# Verdict thresholds on the macro AUC with the lungs blacked out: the ones xrayviewer.model.audit.findings uses.
SHORTCUT_AUC = 0.7
CHANCE_LEVEL_AUC = 0.6
# (file, tab title) of the report's figures, in the order a person reads them
FIGURES = (("masking.png", "Lungs removed"), ("mean_heatmaps.png", "Mean heatmaps"),
           ("lung_attention.png", "Lung attention"), ("by_source.png", "Per source"))


# ---------------------------------------------------------------- work functions (worker threads; no Qt widgets)

@dataclass
class AuditOutcome:
    """What the results view shows: the summary (as in summary.json), summary.md and the figures (RGBA arrays)."""

    summary: dict[str, Any]
    out_dir: Path
    markdown: str = ""
    figures: dict[str, np.ndarray] = field(default_factory=dict)


def default_report_dir(model_name: str = "") -> Path:
    """A new, timestamped folder under the cache: <cache>/audits/<model>-YYYYmmdd-HHMMSS."""
    from xrayviewer.paths import cache_dir
    from xrayviewer.ui.training_dialog import bundle_dir_name

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return cache_dir() / "audits" / (f"{bundle_dir_name(model_name)}-{stamp}" if model_name else stamp)


def count_images(root: Path, *, cancel: threading.Event) -> dict[str, int]:
    """Images per class of a folder-per-class dataset (for the time estimate); raises ValueError with the reason."""
    from xrayviewer.imaging import discover_dataset

    dataset = discover_dataset(root)
    check_cancel(cancel)
    if not dataset.items:
        raise ValueError("; ".join(p.message for p in dataset.errors) or "no images in class folders")
    counts = {label: 0 for label in dataset.classes}
    for item in dataset.items:
        counts[item.label] += 1
    return counts


def classifier_from_training(result: Any, name: str = "new model (not saved)"):
    """A Classifier on a TrainingResult's in-memory model: the audit needs no saved bundle."""
    from xrayviewer.model.bundle import ModelBundle
    from xrayviewer.model.classifier import Classifier

    return Classifier(ModelBundle(Path(name), result.meta(name)), result.model)


def read_outcome(out_dir: Path, summary: dict[str, Any], figures: dict[str, Any] | None = None,
                 colours: FigureColours | None = None) -> AuditOutcome:
    """summary.md and the figures of a written report as RGBA arrays, made here so the GUI thread only makes
    pixmaps: the report's Figures drawn again in the window's colours when given (the PNG files keep matplotlib's
    white, for documents), else the PNG files."""
    import cv2

    outcome = AuditOutcome(summary, Path(out_dir))
    md = outcome.out_dir / "summary.md"
    outcome.markdown = md.read_text(encoding="utf-8") if md.is_file() else ""
    for name, _title in FIGURES:
        if figures and name in figures and colours is not None:
            theme_figure(figures[name], colours)
            outcome.figures[name] = render_figure(figures[name])
            continue
        image = cv2.imread(str(outcome.out_dir / name), cv2.IMREAD_COLOR)
        if image is not None:
            outcome.figures[name] = cv2.cvtColor(image, cv2.COLOR_BGR2RGBA)
    return outcome


def audit_job(dataset: Path, out_dir: Path, *, progress: Callable[[dict], None], cancel: threading.Event,
              classifier: Any = None, training_result: Any = None, segmenter: Any = None,
              limit: int | None = None, only: Collection[str] | None = None,
              colours: FigureColours | None = None) -> AuditOutcome:
    """Build what is missing (the classifier of `training_result`, the shipped lung model), run the audit, read the
    report back. The outcome is also sent as a {"kind": "report"} progress event before returning,
    so a cancelled run (which the worker reports as aborted, without a return value) still shows its partial report.
    """
    from xrayviewer.model.audit import run_audit

    if classifier is None:
        progress({"kind": "stage", "text": "Preparing the model…"})
        classifier = classifier_from_training(training_result)
    check_cancel(cancel)
    if segmenter is None:
        from xrayviewer.model.lungs import LungSegmenter

        progress({"kind": "stage", "text": "Loading the lung model…"})
        segmenter = LungSegmenter.load()
    check_cancel(cancel)
    figures: dict[str, Any] = {}
    summary = run_audit(dataset, classifier, segmenter, out_dir, progress=progress, cancel=cancel, limit=limit,
                        only=only, figures=figures)
    outcome = read_outcome(Path(out_dir), summary, figures, colours)
    progress({"kind": "report", "outcome": outcome})
    return outcome


# ---------------------------------------------------------------- reading the summary

def machine_slowness(classifier: Any) -> float:
    """How much slower than the reference machine this one ran the classifier's last analyses (1.0 when unknown)."""
    seconds = getattr(classifier, "seconds_per_analysis", None)
    size = getattr(classifier, "input_size", None)
    if not seconds or not size:
        return 1.0
    expected = REFERENCE_PASS_SECONDS_PER_224_SQUARE * size[0] * size[1] / 224 ** 2
    return min(max(seconds / expected, 0.25), 8.0)


def estimate_text(images: int, loading: bool = False, input_size: tuple[int, int] | None = None,
                  slowness: float = 1.0) -> str:
    rows, cols = input_size or (224, 224)
    per_image = (SECONDS_PER_IMAGE + SECONDS_PER_IMAGE_PER_224_SQUARE * rows * cols / 224 ** 2) * slowness
    seconds = images * per_image + (MODEL_LOAD_SECONDS if loading else 0)
    return f"{images} image{'s' if images != 1 else ''}: about {format_duration(seconds)}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{float(value):.0%}"


def verdict(summary: dict[str, Any]) -> tuple[str, str]:
    """(level, sentence): level "warning" (shortcuts likely), "ok" (little left outside the lungs) or "info"."""
    perf = summary["performance"]
    as_is, removed = perf["as_is"]["macro_auc"], perf["lungs_blacked_out"]["macro_auc"]
    outside = summary["lung_attention"].get("share_below_50")
    mostly_outside = outside is not None and outside > 0.5
    as_is_text = format_number(as_is, 3)
    if removed is None:
        text = ("Not enough labelled images of each of the model's classes to measure AUC, so the lungs-removed test "
                "cannot judge this model.")
        if mostly_outside:
            return "warning", text + f" Most images ({outside:.0%}) have most of the attention outside the lungs."
        return "info", text
    if removed >= SHORTCUT_AUC:
        return "warning", (f"The model still scores well with the lungs blacked out (macro AUC {removed:.3f}, "
                           f"{as_is_text} as is): it may be reading shortcuts outside the lungs — the hospital, "
                           "age, markers or borders — rather than the disease.")
    if removed >= CHANCE_LEVEL_AUC:
        return "warning" if mostly_outside else "info", (
            f"Some signal remains with the lungs blacked out (macro AUC {removed:.3f}, {as_is_text} as is): "
            "check the mean heatmaps for attention on corners, labels and borders.")
    if mostly_outside:
        return "warning", (f"With the lungs blacked out the model is near chance (macro AUC {removed:.3f}), yet "
                           f"{outside:.0%} of the images have most of the attention outside the lungs.")
    return "ok", (f"With the lungs blacked out the model is near chance (macro AUC {removed:.3f}, {as_is_text} "
                  "as is): it needs what is inside the lungs.")


# ---------------------------------------------------------------- widgets

class ReportFigure(FigureView):
    """A report figure scaled to fit; a click opens the full-size PNG in the system's image viewer."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("", parent)
        self.path: Path | None = None

    def show_file(self, path: Path, image: np.ndarray) -> None:
        self.path = path
        self.set_image(image)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip(f"{path}\nClick to open it full size.")

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self.path is not None and event.button() == Qt.MouseButton.LeftButton:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.path)))
        super().mouseReleaseEvent(event)


class _Stat(QWidget):
    """A headline number with its caption underneath; amber when it is a worry."""

    def __init__(self, caption: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.value = QLabel("–")
        self.value.setObjectName("headline")
        caption_label = QLabel(caption)
        caption_label.setObjectName("panelHint")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.value)
        layout.addWidget(caption_label)

    def set_value(self, text: str, low: bool = False) -> None:
        self.value.setText(text)
        self.value.setStyleSheet("color: #ffc46b;" if low else "")


class AuditResultsView(QWidget):
    """Headline numbers, the verdict, and tabs: Summary (summary.md) and one per figure."""

    HEADLINE_ROWS = (("as_is", "Images as they are"), ("lungs_blacked_out", "Lungs blacked out"),
                     ("only_lungs", "Only the lungs"))

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = QLabel("")
        self.title.setObjectName("panelTitle")
        self.title.setWordWrap(True)
        self.mean_attention = _Stat("mean lung attention")
        self.outside = _Stat("of the images: attention\nmostly outside the lungs")
        self.table = QGridLayout()
        self.table.setHorizontalSpacing(22)
        self.table.setVerticalSpacing(3)
        self.cells: dict[tuple[str, str], QLabel] = {}
        for col, text in enumerate(("", "Accuracy", "Macro AUC"), start=0):
            header = QLabel(text)
            header.setObjectName("sectionTitle")
            self.table.addWidget(header, 0, col)
        for row, (key, text) in enumerate(self.HEADLINE_ROWS, start=1):
            self.table.addWidget(QLabel(text), row, 0)
            for col, metric in enumerate(("accuracy", "macro_auc"), start=1):
                cell = QLabel("–")
                cell.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.addWidget(cell, row, col)
                self.cells[(key, metric)] = cell
        self.table.setColumnStretch(3, 1)
        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        self.verdict_level = ""
        self.tabs = QTabWidget()
        self.summary_browser = QTextBrowser()
        self.summary_browser.setOpenExternalLinks(True)
        self.tabs.addTab(self.summary_browser, "Summary")
        self.figures: dict[str, ReportFigure] = {}
        for name, title in FIGURES:
            view = ReportFigure()
            self.figures[name] = view
            self.tabs.addTab(view, title)

        top = QHBoxLayout()
        top.setSpacing(18)
        top.addWidget(self.mean_attention, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(self.outside, 0, Qt.AlignmentFlag.AlignTop)
        top.addLayout(self.table)
        top.addWidget(self.verdict, 1, Qt.AlignmentFlag.AlignVCenter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addLayout(top)
        layout.addWidget(self.tabs, 1)
        self.clear()

    def clear(self, text: str = "") -> None:
        self.title.setText(text)
        self.mean_attention.set_value("–")
        self.outside.set_value("–")
        for cell in self.cells.values():
            cell.setText("–")
        self._set_verdict("", "")
        self.summary_browser.setMarkdown("")
        for index, (name, _title) in enumerate(FIGURES, start=1):
            self.figures[name].path = None
            self.figures[name].clear_image("")
            self.tabs.setTabVisible(index, False)
        self.setVisible(bool(text))

    def show_outcome(self, outcome: AuditOutcome) -> None:
        s = outcome.summary
        self.setVisible(True)
        cancelled = " — cancelled, covers the images done so far" if s.get("cancelled") else ""
        subset = f" ({s['subset']})" if s.get("subset") else ""
        self.title.setText(f"Shortcut audit of {s.get('model') or 'the model'}: {s['images']} images{subset}"
                           f"{cancelled}")
        from xrayviewer.model.audit import LOW_ATTENTION

        att = s["lung_attention"]
        self.mean_attention.set_value(_pct(att.get("mean")), low=(att.get("mean") or 1.0) < LOW_ATTENTION)
        self.outside.set_value(_pct(att.get("share_below_50")), low=(att.get("share_below_50") or 0.0) > 0.5)
        for key, _text in self.HEADLINE_ROWS:
            perf = s["performance"][key]
            for metric in ("accuracy", "macro_auc"):
                self.cells[(key, metric)].setText(format_number(perf.get(metric)))
        self._set_verdict(*verdict(s))
        self.summary_browser.setMarkdown(outcome.markdown)
        self.summary_browser.setSearchPaths([str(outcome.out_dir)])
        for index, (name, _title) in enumerate(FIGURES, start=1):
            view = self.figures[name]
            if name in outcome.figures:
                view.show_file(outcome.out_dir / name, outcome.figures[name])
            self.tabs.setTabVisible(index, name in outcome.figures)

    def _set_verdict(self, level: str, text: str) -> None:
        self.verdict_level = level
        self.verdict.setText(text)
        self.verdict.setVisible(bool(text))
        # theme styles (resources/style.qss): amber box for a warning, red for an error, green text when fine
        self.verdict.setObjectName({"warning": "warningBox", "ok": "attention"}.get(level, "panelHint"))
        self.verdict.style().unpolish(self.verdict)
        self.verdict.style().polish(self.verdict)


class AuditRunner(QWidget):
    """Start / Cancel, progress bar and current file, then the results and "Open report folder".

    `start(dataset, out_dir, **job_kwargs)` runs `audit_job` in a Worker. Signals: `started()`, `stopped(state)` with
    state "done", "cancelled" or "failed".
    """

    started = Signal()
    stopped = Signal(str)

    def __init__(self, start_text: str = "Start audit", parent: QWidget | None = None):
        super().__init__(parent)
        self.start_button = QPushButton(start_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stops after the image in progress; the report covers the images done so far.")
        self.cancel_button.setEnabled(False)
        self.open_button = QPushButton("Open report folder")
        self.open_button.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setFormat("%v / %m images")
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.results = AuditResultsView()
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.bar, 1)
        buttons.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.results, 1)
        self.cancel_button.clicked.connect(self.cancel)
        self.open_button.clicked.connect(self.open_report_folder)

        self.worker: Worker | None = None
        self.outcome: AuditOutcome | None = None
        self.out_dir: Path | None = None
        self.state = ""
        self._pace: tuple[float, int] | None = None

    def is_running(self) -> bool:
        return self.worker is not None and not self.worker.done.is_set()

    def start(self, dataset: Path, out_dir: Path, **job_kwargs: Any) -> None:
        if self.is_running():
            return
        self.outcome, self.out_dir, self.state, self._pace = None, Path(out_dir), "running", None
        self.results.clear()
        self.bar.setRange(0, 0)   # busy until the first image says how many there are
        self.status.setText("Starting…")
        self.open_button.setEnabled(False)
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        job_kwargs.setdefault("colours", FigureColours.of(self))
        self.worker = Worker(audit_job, Path(dataset), Path(out_dir), tag="audit", **job_kwargs)
        sig = self.worker.signals
        sig.progress.connect(self._on_event)
        sig.returned.connect(self._on_returned)
        sig.errored.connect(self._on_error)
        sig.aborted.connect(self._on_aborted)
        sig.finished.connect(self._on_finished)
        start_worker(self.worker)
        self.started.emit()

    def cancel(self) -> None:
        """The worker's own cancel (its thread is busy in TensorFlow: a queued signal would wait)."""
        if self.is_running():
            self.worker.cancel()
            self.cancel_button.setEnabled(False)
            self.status.setText("Cancelling after the image in progress…")

    def reset(self) -> None:
        """Forget the current run (e.g. a new training result): one still going is cancelled and its report ignored."""
        if self.is_running():
            self.worker.cancel()
            sig = self.worker.signals
            for signal, slot in ((sig.progress, self._on_event), (sig.returned, self._on_returned),
                                 (sig.errored, self._on_error), (sig.aborted, self._on_aborted)):
                signal.disconnect(slot)
        self.outcome, self.out_dir, self.state = None, None, ""
        self.results.clear()
        self.status.setText("")
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.open_button.setEnabled(False)

    def open_report_folder(self) -> None:
        if self.out_dir is not None and self.out_dir.is_dir():
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.out_dir)))

    def _on_event(self, event: dict) -> None:
        kind = event.get("kind")
        if kind == "stage":
            if not self.worker or not self.worker.is_cancelled:
                self.status.setText(str(event.get("text", "")))
        elif kind == "image":
            done, total = int(event["done"]), int(event["total"])
            self.bar.setRange(0, total)
            self.bar.setValue(done)
            now = time.monotonic()
            if self._pace is None:
                self._pace = (now, done)
            started, done_then = self._pace
            left = (f" — about {format_duration((now - started) / (done - done_then) * (total - done))} left"
                    if done > done_then else "")
            if not self.worker or not self.worker.is_cancelled:
                self.status.setText(f"Auditing {done + 1} / {total}: {_short(event.get('path', ''))}{left}")
        elif kind == "done":
            self.bar.setValue(self.bar.maximum())
        elif kind == "report":
            self.outcome = event["outcome"]
            self.results.show_outcome(self.outcome)
            self.open_button.setEnabled(True)

    def _on_returned(self, outcome: AuditOutcome) -> None:
        s = outcome.summary
        failed = f"; {len(s['failed'])} unreadable (named in summary.json)" if s.get("failed") else ""
        self._end("done", f"Finished: {s['images']} images in {format_duration(s.get('seconds') or 0)}{failed}. "
                          f"Report: {outcome.out_dir}")

    def _on_aborted(self, _worker_id: Any) -> None:
        if self.outcome is not None:
            self._end("cancelled", f"Audit cancelled: the report covers the {self.outcome.summary['images']} "
                                   f"images done so far ({self.outcome.out_dir}).")
        else:
            self._end("cancelled", "Audit cancelled before any image was audited; no report was written.")

    def _on_error(self, exc: BaseException) -> None:
        self._end("failed", f"The audit could not run: {exc}")

    def _on_finished(self, _worker_id: Any) -> None:
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.stopped.emit(self.state)

    def _end(self, state: str, text: str) -> None:
        self.state = state
        self.status.setText(text)
        if self.bar.maximum() == 0:
            self.bar.setRange(0, 1)
            self.bar.setValue(0)


def _short(path: str, keep: int = 2) -> str:
    """The last `keep` parts of a path (class folder and file name)."""
    return str(Path(*Path(path).parts[-keep:])) if path else ""


class AuditDialog(QDialog):
    """Model › Audit…: choose a labelled folder, a per-class limit and a report folder; run; read the results."""

    def __init__(self, window: Any = None, parent: QWidget | None = None):
        super().__init__(parent if parent is not None else (window if isinstance(window, QWidget) else None))
        self.window_ = window
        self.setWindowTitle("Shortcut audit of the model")
        self.resize(1000, 760)
        self.setSizeGripEnabled(True)

        intro = QLabel("Does the model look at the lungs, or at the hospital? For each image of a labelled folder "
                       "(one sub-folder per class) the audit measures how much of the Grad-CAM attention falls on "
                       "the lungs, and predicts again with the lungs blacked out and with only the lungs left. "
                       "A model that still scores well without the lungs is reading shortcuts.")
        intro.setWordWrap(True)
        intro.setObjectName("panelHint")
        self.model_label = QLabel("")
        self.model_label.setWordWrap(True)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("A folder with one sub-folder per class (covid/, normal/, …)")
        browse = QPushButton("Browse…")
        self.limit = QSpinBox()
        self.limit.setRange(0, 100_000)
        self.limit.setValue(DEFAULT_LIMIT)
        self.limit.setSpecialValueText("all")
        self.limit.setToolTip("At most this many images per class, drawn at random (0 = all images).")
        self.estimate = QLabel("")
        self.estimate.setObjectName("panelHint")
        self.estimate.setWordWrap(True)
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText(f"Automatic: a new folder under {default_report_dir().parent}")
        browse_out = QPushButton("Browse…")
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(browse)
        limit_row = QHBoxLayout()
        limit_row.addWidget(self.limit)
        limit_row.addWidget(self.estimate, 1)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(browse_out)
        form = QFormLayout()
        form.addRow("Model:", self.model_label)
        form.addRow("Labelled folder:", folder_row)
        form.addRow("Images per class:", limit_row)
        form.addRow("Report folder:", out_row)
        self.runner = AuditRunner("Start audit")
        self.close_button = QPushButton("Close")
        bottom = QHBoxLayout()
        bottom.addStretch(1)
        bottom.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.runner, 1)
        layout.addLayout(bottom)

        browse.clicked.connect(self._browse)
        browse_out.clicked.connect(self._browse_out)
        self.folder_edit.editingFinished.connect(self._folder_entered)
        self.limit.valueChanged.connect(self._update_estimate)
        self.runner.start_button.clicked.connect(self.start)
        self.runner.stopped.connect(self._on_stopped)
        self.close_button.clicked.connect(self.close)

        self._count = LatestRequest()
        self.counts: dict[str, int] | None = None
        self._counted_folder = ""
        self._close_when_stopped = False
        service = getattr(window, "model_service", None)
        if service is not None and hasattr(service, "modelChanged"):
            service.modelChanged.connect(self._update_model)
        self._update_model()
        folder = self.viewer_folder()
        if folder is not None:
            self.set_folder(folder)
        else:
            self._update_estimate()

    # model and folder ----------------------------------------------------------------------------------------
    def _service(self) -> Any:
        return getattr(self.window_, "model_service", None)

    def _update_model(self, *_: Any) -> None:
        classifier = getattr(self._service(), "classifier", None)
        if classifier is None:
            self.model_label.setText("<span style='color:#ffb4a9'>No model is loaded in the viewer: load one with "
                                     "Model › Use model first.</span>")
        else:
            bundle = getattr(classifier, "bundle", None)
            name = getattr(bundle, "name", "model")
            version = getattr(bundle, "version", "")
            self.model_label.setText(f"<b>{name}</b>{f' (version {version})' if version else ''} — classes "
                                     f"{', '.join(classifier.classes)}")
        self._update_estimate()

    def viewer_folder(self) -> Path | None:
        """The folder open in the viewer: the common parent of its files, one level up when that is a class folder
        (the viewer may show the whole labelled folder or one class of it)."""
        paths = self.window_.folder_paths() if hasattr(self.window_, "folder_paths") else []
        if not paths:
            return None
        try:
            common = Path(os.path.commonpath([str(p) for p in paths]))
        except ValueError:
            return None
        if common.is_file():
            common = common.parent
        classes = getattr(getattr(self._service(), "classifier", None), "classes", None) or []
        return common.parent if common.name in classes else common

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a labelled folder (one sub-folder per class)",
                                                  self.folder_edit.text())
        if folder:
            self.set_folder(Path(folder))

    def _browse_out(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose the report folder", self.out_edit.text())
        if folder:
            self.out_edit.setText(folder)

    def _folder_entered(self) -> None:
        text = self.folder_edit.text().strip()
        if text and text != self._counted_folder:
            self.set_folder(Path(text).expanduser())

    def set_folder(self, folder: Path) -> None:
        """Show the folder and count its images per class in the background (for the time estimate)."""
        self.folder_edit.setText(str(folder))
        self._counted_folder = str(folder)
        self.counts = None
        self.estimate.setText("counting the images…")
        worker = Worker(count_images, Path(folder), tag=str(folder))
        worker.signals.returned.connect(self._on_counted)
        worker.signals.errored.connect(self._on_count_error)
        self._count.submit(worker)

    def _is_current(self) -> bool:
        """The signal comes from the newest count (an older one may have finished before it was cancelled)."""
        return self._count.current is not None and self.sender() is self._count.current.signals

    def _on_counted(self, counts: dict[str, int]) -> None:
        if self._is_current():
            self.counts = counts
            self._update_estimate()

    def _on_count_error(self, exc: BaseException) -> None:
        if self._is_current():
            self.counts = None
            self.estimate.setText(f"<span style='color:#ffb4a9'>{exc}</span>")
            self._update_start()

    def planned_images(self) -> int | None:
        if self.counts is None:
            return None
        limit = self.limit.value()
        return sum(min(n, limit) if limit else n for n in self.counts.values())

    def _update_estimate(self, *_: Any) -> None:
        planned = self.planned_images()
        if planned is not None:
            service = self._service()
            loading = getattr(service, "segmenter", None) is None
            per_class = ", ".join(f"{label} {n}" for label, n in self.counts.items())
            classes = getattr(getattr(service, "classifier", None), "classes", None)
            foreign = [label for label in self.counts if classes is not None and label not in classes]
            note = (f"; {', '.join(foreign)}: not a class of the model, counted for attention only"
                    if foreign else "")
            classifier = getattr(service, "classifier", None)
            input_size = getattr(classifier, "input_size", None)
            slowness = machine_slowness(classifier)
            self.estimate.setText(f"{estimate_text(planned, loading, input_size, slowness)} ({per_class} in the "
                                  f"folder{note})")
        self._update_start()

    def _update_start(self) -> None:
        ready = (getattr(self._service(), "classifier", None) is not None and self.counts is not None
                 and not self.runner.is_running())
        self.runner.start_button.setEnabled(ready)

    # running -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        service = self._service()
        classifier = getattr(service, "classifier", None)
        if classifier is None or self.counts is None or self.runner.is_running():
            return
        if self.folder_edit.text().strip() != self._counted_folder:   # typed, not yet confirmed with Enter
            self._folder_entered()
            return
        name = getattr(getattr(classifier, "bundle", None), "name", "")
        out = Path(self.out_edit.text().strip()).expanduser() if self.out_edit.text().strip() else \
            default_report_dir(name)
        self.runner.start(Path(self._counted_folder), out, classifier=classifier,
                          segmenter=getattr(service, "segmenter", None), limit=self.limit.value() or None)
        for widget in (self.folder_edit, self.limit, self.out_edit):
            widget.setEnabled(False)

    def _on_stopped(self, _state: str) -> None:
        for widget in (self.folder_edit, self.limit, self.out_edit):
            widget.setEnabled(True)
        self._update_estimate()     # the audit's own analyses measured this machine's speed
        if self._close_when_stopped:
            self._close_when_stopped = False
            self.close()

    # closing -------------------------------------------------------------------------------------------------
    def _may_close(self) -> bool:
        """True when no audit runs. While one runs, ask; on "Yes" cancel and close once the worker stopped."""
        if not self.runner.is_running():
            return True
        answer = QMessageBox.question(self, "The audit is running",
                                      "Stop the audit and close? The report keeps the images done so far.",
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        if answer == QMessageBox.StandardButton.Yes:
            self._close_when_stopped = True   # closes from _on_stopped: the GUI thread never waits
            self.runner.cancel()
        return False

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if not self._may_close():
            event.ignore()
            return
        self._count.cancel()
        super().closeEvent(event)

    def reject(self) -> None:  # Esc
        if self._may_close():
            self._count.cancel()
            super().reject()


class TrainingAuditPanel(QWidget):
    """The Audit tab of the training results: the new model, on its own validation split (files it never saw)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.intro = QLabel("")
        self.intro.setWordWrap(True)
        self.intro.setObjectName("panelHint")
        self.runner = AuditRunner("Run audit")
        layout = QVBoxLayout(self)
        layout.addWidget(self.intro)
        layout.addWidget(self.runner, 1)
        self.runner.start_button.clicked.connect(self.start)
        self.runner.stopped.connect(self._update_start)
        self.result: Any = None
        self.window_: Any = None
        self.set_result(None)

    def validation_files(self) -> list[str]:
        return list(((self.result.split.get("validation") or {}).get("paths") or [])) if self.result else []

    def set_result(self, result: Any, window: Any = None) -> None:
        """A new training result (or None while there is none); a running audit of an older result is cancelled."""
        self.runner.reset()
        self.result, self.window_ = result, window
        files = len(self.validation_files())
        if result is None:
            self.intro.setText("The audit of the new model is available once the training has finished.")
        else:
            loading = self._segmenter() is None
            input_size = getattr(getattr(result, "config", None), "input_size", None)
            slowness = machine_slowness(getattr(getattr(self.window_, "model_service", None), "classifier", None))
            self.intro.setText(
                f"Shortcut audit of the new model on its {files} validation images (never used to fit it): how much "
                "of its attention falls on the lungs, and how it scores with the lungs blacked out and with only the "
                f"lungs left. {estimate_text(files, loading, input_size, slowness)}.")
        self._update_start()

    def _update_start(self, *_: Any) -> None:
        self.runner.start_button.setEnabled(bool(self.validation_files()) and not self.runner.is_running())

    def _segmenter(self) -> Any:
        return getattr(getattr(self.window_, "model_service", None), "segmenter", None)

    def start(self) -> None:
        if self.result is None or self.runner.is_running():
            return
        self.runner.start(Path(self.result.dataset_root), default_report_dir("new-model"),
                          training_result=self.result, segmenter=self._segmenter(), only=self.validation_files())

    def cancel(self) -> None:
        self.runner.cancel()


# ---------------------------------------------------------------- install into the main window

class _AuditLauncher(QObject):
    """Owns the audit dialog opened from the menu; a child of the window so it lives as long as the window."""

    def __init__(self, window: Any):
        super().__init__(window if isinstance(window, QObject) else None)
        self.window_ = window
        self.dialog: AuditDialog | None = None

    def open_audit(self) -> AuditDialog:
        if self.dialog is None or not self.dialog.isVisible():
            if self.dialog is not None:
                self.dialog.deleteLater()     # a closed dialog is not reused: its folder may be stale
            self.dialog = AuditDialog(self.window_)
        self.dialog.show()
        self.dialog.raise_()
        self.dialog.activateWindow()
        return self.dialog


def install(window: Any) -> _AuditLauncher:
    """Add "Audit…" to the window's Model menu."""
    launcher = _AuditLauncher(window)
    action = window.menu("Model").addAction("Audit…")
    action.setStatusTip("Shortcut audit: does the model look at the lungs, or at the hospital?")
    action.triggered.connect(launcher.open_audit)
    window._audit_launcher = launcher    # keeps a Python reference when the window is not a QObject
    return launcher
