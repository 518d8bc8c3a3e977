"""Classify folder, the results table (sortable, filterable, with a ground-truth summary) and the exports menu.

`install(window)` adds "Classify folder" (Tools menu and toolbar), a bottom "Results" dock, and under
File › Export: "Export results CSV…", "Case report…", "Export heatmap…". All model work runs in workers
(xrayviewer.ui.workers); the GUI thread only appends rows, draws and writes nothing heavier than a CSV.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Sequence

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QSortFilterProxyModel, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QDockWidget, QDoubleSpinBox, QFileDialog, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QMenu, QMessageBox, QProgressBar, QPushButton,
                               QTableView, QVBoxLayout, QWidget)

from xrayviewer.reports.summary import ResultsSummary, summarize_results
from xrayviewer.results import ResultRow, write_results_csv
from xrayviewer.ui.colours import ERROR_TEXT
from xrayviewer.ui.jobs import METHODS as EXPLANATION_NAMES
from xrayviewer.ui.settings import app_settings, read_float
from xrayviewer.ui.workers import Worker, start_worker

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
LOW_CONFIDENCE_KEY = "results/low_confidence_threshold"
DEFAULT_LOW_CONFIDENCE = 0.6
_RED = QColor(ERROR_TEXT)
_GRAY = QColor("#777777")


def _num(value: float | None, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _sortable(value: float | None) -> float:
    # empty cells sort below every number in ascending order
    return -math.inf if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


# ------------------------------------------------------------------------------------------------ table model

class ResultsTableModel(QAbstractTableModel):
    """One ResultRow per table row: file, predicted, p per class, ground truth, correct?, lung attention, OOD, error."""

    FIXED_BEFORE = ("File", "Predicted")
    FIXED_AFTER = ("Ground truth", "Correct?", "Lung attention", "OOD score", "Error")

    def __init__(self, classes: Sequence[str] = (), parent: QObject | None = None):
        super().__init__(parent)
        self._classes = list(classes)
        self._rows: list[ResultRow] = []

    # data access for the proxy, the exports and tests
    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def rows(self) -> list[ResultRow]:
        return list(self._rows)

    def row_at(self, row: int) -> ResultRow:
        return self._rows[row]

    def reset(self, classes: Sequence[str]) -> None:
        self.beginResetModel()
        self._classes = list(classes)
        self._rows = []
        self.endResetModel()

    def append_rows(self, rows: Sequence[ResultRow]) -> None:
        if not rows:
            return
        first = len(self._rows)
        self.beginInsertRows(QModelIndex(), first, first + len(rows) - 1)
        self._rows.extend(rows)
        self.endInsertRows()

    # Qt model API
    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.FIXED_BEFORE) + len(self._classes) + len(self.FIXED_AFTER)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal or role != Qt.ItemDataRole.DisplayRole:
            return None
        return self._headers()[section]

    def _headers(self) -> list[str]:
        return [*self.FIXED_BEFORE, *(f"p({c})" for c in self._classes), *self.FIXED_AFTER]

    def column_of(self, header: str) -> int:
        return self._headers().index(header)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        col = index.column()
        n_classes = len(self._classes)
        key = self._headers()[col]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, col, key, n_classes)
        if role == SORT_ROLE:
            return self._sort_value(row, col, key, n_classes)
        if role == Qt.ItemDataRole.ToolTipRole:
            return row.error or row.path
        if role == Qt.ItemDataRole.ForegroundRole:
            if row.error or (key == "Correct?" and row.correct is False) or (key == "OOD score" and row.ood_flag):
                return QBrush(_RED)
            if key == "Ground truth" and row.ground_truth and row.ground_truth not in self._classes:
                return QBrush(_GRAY)  # a label the model does not know
        if role == Qt.ItemDataRole.TextAlignmentRole and (2 <= col < 2 + n_classes
                                                          or key in ("Lung attention", "OOD score")):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _display(self, row: ResultRow, col: int, key: str, n_classes: int) -> str:
        if col == 0:
            return Path(row.path).name
        if col == 1:
            return row.predicted
        if col < 2 + n_classes:
            return _num(row.probabilities.get(self._classes[col - 2]))
        if key == "Ground truth":
            return row.ground_truth
        if key == "Correct?":
            return {True: "yes", False: "no", None: ""}[row.correct]
        if key == "Lung attention":  # a share, shown as the viewer shows it
            value = row.lung_attention
            return "" if value is None or math.isnan(value) else f"{100 * value:.0f} %"
        if key == "OOD score":
            return _num(row.ood_score) + ("  ⚠" if row.ood_flag else "")
        return row.error

    def _sort_value(self, row: ResultRow, col: int, key: str, n_classes: int):
        if 2 <= col < 2 + n_classes:
            return _sortable(row.probabilities.get(self._classes[col - 2]))
        if key == "Lung attention":
            return _sortable(row.lung_attention)
        if key == "OOD score":
            return _sortable(row.ood_score)
        if key == "Correct?":
            return {True: 2, False: 1, None: 0}[row.correct]
        if col == 0:
            return row.path.lower()
        return self._display(row, col, key, n_classes).lower()


class ResultsFilterProxy(QSortFilterProxyModel):
    """Sorts by SORT_ROLE (numbers as numbers). Category filters combine with OR (mismatches or errors…),
    the text filter with AND."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.only_mismatches = False
        self.only_low_confidence = False
        self.only_errors = False
        self.low_confidence_threshold = DEFAULT_LOW_CONFIDENCE
        self.text = ""

    def set_filters(self, **changes: Any) -> None:
        self.beginFilterChange()
        for name, value in changes.items():
            if not hasattr(self, name):
                raise AttributeError(name)
            setattr(self, name, value)
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def accepts(self, row: ResultRow) -> bool:
        categories = []
        if self.only_mismatches:
            categories.append(row.correct is False)
        if self.only_low_confidence:
            categories.append(not row.error and row.confidence < self.low_confidence_threshold)
        if self.only_errors:
            categories.append(bool(row.error))
        if categories and not any(categories):
            return False
        needle = self.text.strip().lower()
        if needle:
            haystack = " ".join((row.path, row.predicted, row.ground_truth, row.error)).lower()
            return needle in haystack
        return True

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex) -> bool:
        return self.accepts(self.sourceModel().row_at(source_row))


# ------------------------------------------------------------------------------------------------ summary

def summary_html(summary: ResultsSummary) -> str:
    """Accuracy, confusion matrix and per-class sensitivity/specificity as a compact HTML block."""
    if not summary.has_ground_truth:
        return ""
    esc = html.escape
    acc = summary.accuracy or 0.0
    head = (f"<b>Accuracy {100 * acc:.1f} %</b> ({summary.n_correct} of {summary.n_scored} images with ground truth"
            + (f"; {summary.n_errors} unreadable" if summary.n_errors else "") + ")")
    predicted = summary.labels[:len(summary.per_class)]
    cells = "".join(f"<th>{esc(p)}</th>" for p in predicted)
    matrix = [f"<tr><th align='left'>truth ↓ / predicted →</th>{cells}</tr>"]
    for i, label in enumerate(summary.labels):
        row = "".join(
            f"<td align='right'>{'<b>' if i == j else ''}{summary.confusion[i, j]}{'</b>' if i == j else ''}</td>"
            for j in range(len(predicted)))
        matrix.append(f"<tr><th align='left'>{esc(label)}</th>{row}</tr>")
    per_class = ["<tr><th align='left'>class</th><th>n</th><th>sensitivity</th><th>specificity</th></tr>"]
    for c in summary.per_class:
        sens = "—" if c.sensitivity is None else f"{100 * c.sensitivity:.1f} %"
        spec = "—" if c.specificity is None else f"{100 * c.specificity:.1f} %"
        per_class.append(f"<tr><td>{esc(c.label)}</td><td align='right'>{c.support}</td>"
                         f"<td align='right'>{sens}</td><td align='right'>{spec}</td></tr>")
    table = "<table cellspacing='0' cellpadding='2'>{}</table>"
    return (f"{head}<table><tr><td valign='top'>{table.format(''.join(matrix))}</td><td width='24'></td>"
            f"<td valign='top'>{table.format(''.join(per_class))}</td></tr></table>")


# ------------------------------------------------------------------------------------------------ panel

class ResultsPanel(QWidget):
    """Progress + Cancel, the ground-truth summary, the filter bar and the table."""

    openRequested = Signal(object)     # Path of the double-clicked row
    cancelRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.table_model = ResultsTableModel(parent=self)
        self.proxy = ResultsFilterProxy(self)
        self.proxy.setSourceModel(self.table_model)

        self.status = QLabel("Open a folder and choose Tools › Classify folder.")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancelRequested)
        top = QHBoxLayout()
        top.addWidget(self.status, 1)
        top.addWidget(self.progress, 1)
        top.addWidget(self.cancel_button)

        self.summary = QLabel()
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setVisible(False)

        self.mismatches = QCheckBox("Only mismatches")
        self.low_confidence = QCheckBox("Only low confidence <")
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setDecimals(2)
        self.threshold.setValue(DEFAULT_LOW_CONFIDENCE)
        self.threshold.setToolTip("Highest class probability below which a prediction counts as low confidence")
        self.errors = QCheckBox("Only errors")
        self.text_filter = QLineEdit()
        self.text_filter.setPlaceholderText("Filter by file, class or error…")
        self.text_filter.setClearButtonEnabled(True)
        self.shown = QLabel()
        filters = QHBoxLayout()
        for w in (self.mismatches, self.low_confidence, self.threshold, self.errors):
            filters.addWidget(w)
        filters.addWidget(self.text_filter, 1)
        filters.addWidget(self.shown)
        for box in (self.mismatches, self.low_confidence, self.errors):
            box.toggled.connect(self._apply_filters)
        self.threshold.valueChanged.connect(self._apply_filters)
        self.text_filter.textChanged.connect(self._apply_filters)

        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # run order until the user sorts
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.doubleClicked.connect(self._on_double_click)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addLayout(filters)
        layout.addWidget(self.table, 1)

        # the summary is recomputed at most a few times a second while rows stream in
        self._summary_timer = QTimer(self)
        self._summary_timer.setSingleShot(True)
        self._summary_timer.setInterval(250)
        self._summary_timer.timeout.connect(self.update_summary)
        self._apply_filters()

    # run lifecycle
    def start_run(self, classes: Sequence[str], total: int, folder_label: str) -> None:
        self.table_model.reset(classes)
        self.table.resizeColumnsToContents()
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"Classifying {total} images in {folder_label}…")
        self.update_summary()

    def add_row(self, row: ResultRow, done: int, total: int) -> None:
        self.table_model.append_rows([row])
        self.progress.setValue(done)
        self._update_shown()
        if not self._summary_timer.isActive():
            self._summary_timer.start()

    def finish_run(self, message: str) -> None:
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self.status.setText(message)
        self._summary_timer.stop()
        self.update_summary()
        self.table.resizeColumnsToContents()

    def update_summary(self) -> None:
        text = summary_html(summarize_results(self.table_model.rows, self.table_model.classes))
        self.summary.setText(text)
        self.summary.setVisible(bool(text))

    def _apply_filters(self, *_: Any) -> None:
        self.proxy.set_filters(only_mismatches=self.mismatches.isChecked(),
                               only_low_confidence=self.low_confidence.isChecked(),
                               only_errors=self.errors.isChecked(),
                               low_confidence_threshold=self.threshold.value(), text=self.text_filter.text())
        self._update_shown()

    def _update_shown(self) -> None:
        total = self.table_model.rowCount()
        shown = self.proxy.rowCount()
        self.shown.setText(f"{shown} of {total}" if shown != total else f"{total} rows")

    def visible_rows(self) -> list[ResultRow]:
        """Rows in the table's current order and filter."""
        return [self.table_model.row_at(self.proxy.mapToSource(self.proxy.index(r, 0)).row())
                for r in range(self.proxy.rowCount())]

    def _on_double_click(self, index: QModelIndex) -> None:
        source = self.proxy.mapToSource(index)
        if source.isValid():
            self.openRequested.emit(Path(self.table_model.row_at(source.row()).path))


# ------------------------------------------------------------------------------------------------ controller

class ResultsController(QObject):
    """Owns the actions, the dock and the workers of Classify folder and the exports for one window."""

    reportWritten = Signal(object)     # list[Path] of a finished export (tests and the status bar)
    runFinished = Signal(object)       # list[ResultRow] at the end of a run (finished, cancelled or failed)

    def __init__(self, window: Any):
        super().__init__(window)
        self.window = window
        self.panel = ResultsPanel()
        self.dock = QDockWidget("Results", window)
        self.dock.setObjectName("ResultsDock")
        self.dock.setWidget(self.panel)
        window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.dock)
        self.dock.hide()
        self.run_worker: Worker | None = None
        self.export_worker: Worker | None = None
        self.last_message = ""
        self._run_total = 0

        self.classify_action = QAction("Classify folder", self)
        self.classify_action.setToolTip("Run the active model over every image of the open folder")
        self.classify_action.setShortcut("Ctrl+Shift+K")
        self.classify_action.triggered.connect(self.classify_folder)
        self.export_csv_action = QAction("Export results CSV…", self)
        self.export_csv_action.setToolTip("All rows of the results table, same columns as `predict --csv`")
        self.export_csv_action.triggered.connect(self._ask_export_csv)
        self.case_report_action = QAction("Case report…", self)
        self.case_report_action.setToolTip("One-page PDF and PNG report of the current image")
        self.case_report_action.triggered.connect(self._ask_case_report)
        self.heatmap_action = QAction("Export heatmap…", self)
        self.heatmap_action.setToolTip("Overlay as 8-bit RGB PNG and the raw map as 16-bit PNG, at image size")
        self.heatmap_action.triggered.connect(self._ask_export_heatmap)
        self.show_results_action = self.dock.toggleViewAction()
        self.show_results_action.setText("Results table")

        window.menu("Tools").addAction(self.classify_action)
        window.toolbar.addAction(self.classify_action)
        self.export_menu = _add_export_menu(window.menu("File"))
        for action in (self.export_csv_action, self.case_report_action, self.heatmap_action):
            self.export_menu.addAction(action)
        window.menu("View").addAction(self.show_results_action)

        self.panel.openRequested.connect(self._open_from_table)
        self.panel.cancelRequested.connect(self.cancel_run)
        self.panel.threshold.valueChanged.connect(self._save_threshold)
        self.panel.threshold.setValue(self._load_threshold())
        window.model_service.modelChanged.connect(self._update_actions)
        self._update_actions()

    # ----------------------------------------------------------------------------------- state
    @property
    def classifier(self) -> Any:
        return self.window.model_service.classifier

    @property
    def running(self) -> bool:
        return self.run_worker is not None and not self.run_worker.done.is_set()

    def _update_actions(self, *_: Any) -> None:
        has_model = self.classifier is not None
        self.classify_action.setEnabled(has_model and not self.running)
        self.case_report_action.setEnabled(has_model)
        self.heatmap_action.setEnabled(has_model)
        self.export_csv_action.setEnabled(self.panel.table_model.rowCount() > 0)

    def _say(self, text: str, *, problem: bool = False) -> None:
        """Status bar for news, a non-blocking message box for problems (never a traceback)."""
        self.last_message = text
        status = getattr(self.window, "statusBar", None)
        if callable(status):
            status().showMessage(text, 10000)
        if problem:
            box = QMessageBox(QMessageBox.Icon.Warning, "XRayViewer", text, QMessageBox.StandardButton.Ok,
                              self.window)
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            box.open()

    def _load_threshold(self) -> float:
        return min(1.0, max(0.0, read_float(app_settings(), LOW_CONFIDENCE_KEY, DEFAULT_LOW_CONFIDENCE)))

    def _save_threshold(self, value: float) -> None:
        app_settings().setValue(LOW_CONFIDENCE_KEY, float(value))

    # ----------------------------------------------------------------------------------- classify folder
    def classify_folder(self) -> Worker | None:
        if self.running:
            return None
        classifier = self.classifier
        if classifier is None:
            self._say("No model is loaded yet: choose one in the Model menu, then Classify folder.", problem=True)
            return None
        paths = [Path(p) for p in self.window.folder_paths()]
        if not paths:
            self._say("Open a folder of radiographs first (File › Open folder…).", problem=True)
            return None
        from xrayviewer.reports.runs import classify_folder

        self._run_total = len(paths)
        folder = Path(paths[0]).parent.name if len({p.parent for p in paths}) == 1 else "the open folder"
        self.panel.start_run(classifier.classes, len(paths), folder)
        self.dock.show()
        self.dock.raise_()
        worker = Worker(classify_folder, classifier, paths, lungs=self._lungs(), tag=("classify-folder", len(paths)))
        worker.signals.progress.connect(self._on_run_progress)
        worker.signals.returned.connect(self._on_run_returned)
        worker.signals.aborted.connect(self._on_run_aborted)
        worker.signals.errored.connect(self._on_run_errored)
        worker.signals.finished.connect(self._update_actions)
        self.run_worker = worker
        start_worker(worker)
        self._update_actions()
        return worker

    def cancel_run(self) -> None:
        if self.running:
            self.run_worker.cancel()
            self.panel.cancel_button.setEnabled(False)
            self.panel.status.setText("Cancelling… (rows so far stay)")

    def _lungs(self) -> Any:
        """The window's lung segmenter (loaded with the model), or None: lung attention then stays empty."""
        return getattr(self.window.model_service, "segmenter", None)

    def _on_run_progress(self, event: Any) -> None:
        if not isinstance(event, dict) or event.get("kind") != "row":
            return
        row: ResultRow = event["row"]
        self.panel.add_row(row, event["done"], event["total"])
        try:
            self.window.set_badge(Path(row.path), row)
        except Exception:  # noqa: BLE001 - a thumbnail gone since the run started is no reason to stop filling
            pass

    def _finish_run(self, message: str, *, problem: bool = False) -> None:
        self.run_worker = None  # its last signal is in: a new run may start (its `done` flag is set a moment later)
        self.panel.finish_run(message)
        self._say(message, problem=problem)
        self._update_actions()
        self.runFinished.emit(self.panel.table_model.rows)

    def _on_run_returned(self, rows: Any) -> None:
        n = self.panel.table_model.rowCount()
        errors = sum(1 for r in self.panel.table_model.rows if r.error)
        self._finish_run(f"Classified {n} images" + (f" ({errors} could not be read)" if errors else "") + ".")

    def _on_run_aborted(self, *_: Any) -> None:
        n = self.panel.table_model.rowCount()
        self._finish_run(f"Cancelled after {n} of {self._run_total} images; the rows so far stay.")

    def _on_run_errored(self, exc: Any) -> None:
        n = self.panel.table_model.rowCount()
        self._finish_run(f"Classify folder stopped after {n} of {self._run_total} images: {exc}", problem=True)

    def _open_from_table(self, path: Path) -> None:
        if not self.window.select_path(path):  # no longer in the open folder: open the file itself
            self.window.open_path(path)

    # ----------------------------------------------------------------------------------- exports
    def _ask_export_csv(self) -> None:
        out, _ = QFileDialog.getSaveFileName(self.window, "Export results CSV", "results.csv", "CSV (*.csv)")
        if out:
            self.export_csv(out)

    def export_csv(self, out: str | Path) -> int | None:
        model = self.panel.table_model
        if model.rowCount() == 0:
            self._say("There are no results to export yet: run Tools › Classify folder first.", problem=True)
            return None
        try:
            n = write_results_csv(model.rows, out, model.classes)
        except OSError as err:
            self._say(f"Could not write {out}: {err.strerror or err}", problem=True)
            return None
        self._say(f"Exported {n} rows to {out}.")
        self.reportWritten.emit([Path(out)])
        return n

    def _current_for_export(self) -> tuple[Path, dict, str] | None:
        """(path, what the screen already shows for it, explanation method name), or None after saying why not."""
        path = self.window.current_path()
        if path is None:
            self._say("Select an image first.", problem=True)
            return None
        if self.classifier is None:
            self._say("No model is loaded yet: choose one in the Model menu.", problem=True)
            return None
        path = Path(path)
        explained = getattr(self.window, "current_explained", lambda: None)()
        if explained is not None and self._is_current(explained, path):
            # export exactly what is on screen: the method and class the user chose, the lung fields shown
            known = {"analysis": explained.analysis, "class_index": explained.class_index,
                     "heatmap": explained.heatmap, "lung_mask": explained.lung_mask,
                     "lung_attention": explained.lung_attention}
            return path, known, EXPLANATION_NAMES.get(explained.method, explained.method)
        analysis = self.window.current_analysis()
        if analysis is not None and self._from_active_model(analysis) and getattr(analysis, "cams", None) is not None:
            return path, {"analysis": analysis}, "Grad-CAM"
        return path, {}, "Grad-CAM"  # the worker computes it

    def _from_active_model(self, analysis: Any) -> bool:
        return list(getattr(analysis, "classes", [])) == list(self.classifier.classes)

    def _is_current(self, explained: Any, path: Path) -> bool:
        service_key = getattr(self.window.model_service, "model_key", None)
        return (Path(explained.path).resolve() == path.resolve() and self._from_active_model(explained.analysis)
                and (service_key is None or explained.model_key == service_key))

    def _ask_case_report(self) -> None:
        current = self._current_for_export()
        if current is None:
            return
        suggestion = str(current[0].with_name(f"{current[0].stem}-report.pdf"))
        out, _ = QFileDialog.getSaveFileName(self.window, "Case report (PDF; a PNG is written beside it)",
                                             suggestion, "PDF (*.pdf)")
        if out:
            pdf = Path(out).with_suffix(".pdf")
            self.case_report(pdf, pdf.with_suffix(".png"))

    def case_report(self, out_pdf: str | Path | None, out_png: str | Path | None = None) -> Worker | None:
        current = self._current_for_export()
        if current is None:
            return None
        from xrayviewer.reports.case_report import case_report_for_file

        path, known, method = current
        return self._start_export(case_report_for_file, path, self.classifier, out_pdf=out_pdf, out_png=out_png,
                                  method=method, lungs=self._lungs(), what="case report", **known)

    def _ask_export_heatmap(self) -> None:
        current = self._current_for_export()
        if current is None:
            return
        suggestion = str(current[0].with_name(f"{current[0].stem}-heatmap.png"))
        out, _ = QFileDialog.getSaveFileName(self.window, "Export heatmap (overlay; the 16-bit raw map goes beside it)",
                                             suggestion, "PNG (*.png)")
        if out:
            self.export_heatmap(Path(out).with_suffix(".png"))

    def export_heatmap(self, out_overlay: str | Path, out_raw: str | Path | None = None) -> Worker | None:
        current = self._current_for_export()
        if current is None:
            return None
        from xrayviewer.reports.heatmap_export import export_heatmap_for_file

        path, known, _method = current
        return self._start_export(export_heatmap_for_file, path, self.classifier, out_overlay, out_raw,
                                  what="heatmap", **known)

    def _start_export(self, fn, *args: Any, what: str, **kwargs: Any) -> Worker:
        worker = Worker(fn, *args, tag=what, **kwargs)
        worker.signals.returned.connect(self._on_export_returned)
        worker.signals.errored.connect(self._on_export_errored)
        self.export_worker = worker
        start_worker(worker)
        self._say(f"Writing the {what}…")
        return worker

    def _on_export_returned(self, paths: Any) -> None:
        paths = [Path(p) for p in paths]
        self._say("Wrote " + ", ".join(str(p) for p in paths))
        self.reportWritten.emit(paths)

    def _on_export_errored(self, exc: Any) -> None:
        what = self.export_worker.tag if self.export_worker is not None else "export"
        self._say(f"Could not write the {what}: {exc}", problem=True)
        self.reportWritten.emit([])


def _add_export_menu(file_menu: QMenu) -> QMenu:
    """File › Export, above the Quit group when the menu ends with one."""
    export_menu = QMenu("Export", file_menu)
    export_menu.setObjectName("ExportMenu")
    actions = file_menu.actions()
    quit_at = next((i for i, a in enumerate(actions)
                    if a.menuRole() == QAction.MenuRole.QuitRole or "quit" in a.text().replace("&", "").lower()), None)
    if quit_at is None:
        file_menu.addMenu(export_menu)
    else:
        before = actions[quit_at - 1] if quit_at > 0 and actions[quit_at - 1].isSeparator() else actions[quit_at]
        file_menu.insertMenu(before, export_menu)
    return export_menu


def install(window: Any) -> ResultsController:
    """Called by the main window (xrayviewer/ui/extensions.py) after it has built its menus."""
    controller = ResultsController(window)
    window.results_controller = controller
    return controller
