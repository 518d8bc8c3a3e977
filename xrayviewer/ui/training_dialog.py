"""Train… : fine-tune a classifier head on the user's own folder, in the background, with honest metrics.

Four pages — Data (folder checked at once), Settings, Training (live curves, Cancel), Results (new model beside the
active one on the same validation split; Save, Use in viewer). Every slow step — the folder check and thumbnails,
training, evaluation, figure rendering, saving — runs in a `Worker`; the GUI thread only lays out what comes back.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from xrayviewer.ui.colours import ERROR_TEXT
from xrayviewer.ui.figures import FigureColours, FigureView, render_figure, theme_figure
from xrayviewer.ui.formatting import format_duration, format_number
from xrayviewer.ui.image_view import pixmap_gray
from xrayviewer.ui.workers import Cancelled, Worker, check_cancel, start_worker

THUMBS_PER_CLASS = 4
THUMB_PX = 72
CURVE_REDRAW_MS = 250          # live curves redraw at most 4x per second
BATCH_EVENT_MIN_S = 0.05       # head epochs on cached features are fast: forward at most 20 batch events/s
PAGES = ("Data", "Settings", "Training", "Results")
MAX_LISTED_PATHS = 200         # per problem in the Data page's list (thousands of tree items would stall the GUI)


# ---------------------------------------------------------------- work functions (worker threads; no Qt widgets)

@dataclass
class FolderCheck:
    """What the Data page shows: the dataset and a few small thumbnails (uint8) per class."""

    dataset: Any
    thumbnails: dict[str, list[np.ndarray]] = field(default_factory=dict)


def check_folder(root: Path, *, cancel: threading.Event) -> FolderCheck:
    """discover_dataset + a few thumbnails per class (unreadable ones are skipped: the problems list names them)."""
    import cv2

    from xrayviewer.imaging import RadiographError, discover_dataset, read_radiograph
    from xrayviewer.imaging.display import to_uint8

    dataset = discover_dataset(root)
    check_cancel(cancel)
    thumbnails: dict[str, list[np.ndarray]] = {label: [] for label in dataset.classes}
    for label in dataset.classes:
        for item in [it for it in dataset.items if it.label == label][: THUMBS_PER_CLASS * 2]:
            if len(thumbnails[label]) >= THUMBS_PER_CLASS:
                break
            check_cancel(cancel)
            try:
                pixels = read_radiograph(item.path).pixels
            except RadiographError:
                continue
            scale = THUMB_PX / max(pixels.shape)
            size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
            thumbnails[label].append(np.ascontiguousarray(to_uint8(cv2.resize(pixels, size,
                                                                              interpolation=cv2.INTER_AREA))))
    return FolderCheck(dataset, thumbnails)


def _throttled(progress: Callable[[dict], None]) -> Callable[[dict], None]:
    """Forward every event except batch events, which pass at most every BATCH_EVENT_MIN_S (plus each epoch's last)."""
    last = [0.0]

    def forward(event: dict) -> None:
        if event.get("kind") == "batch":
            now = time.monotonic()
            if now - last[0] < BATCH_EVENT_MIN_S and event.get("batch") != event.get("batches"):
                return
            last[0] = now
        progress(event)

    return forward


def run_training(dataset: Any, config: Any, *, progress: Callable[[dict], None],
                 cancel: threading.Event) -> Any:
    """FineTuneJob(dataset, config).run(...) -> TrainingResult; a cancelled run ends as `Cancelled`, never a result."""
    from xrayviewer.training.engine import FineTuneJob

    try:
        result = FineTuneJob(dataset, config).run(progress=_throttled(progress), cancel=cancel)
    except Exception:
        if cancel.is_set():  # whatever the engine raises on cancel, the dialog sees one thing
            raise Cancelled() from None
        raise
    check_cancel(cancel)
    if result is None:
        raise RuntimeError("the training stopped without a result")
    return result


@dataclass
class ModelReport:
    """One column of the Results page: metrics and rendered figures (RGBA arrays) of one model on the split."""

    title: str
    name: str = ""                                                 # the model's name, for captions
    metrics: dict | None = None
    figures: dict[str, np.ndarray] = field(default_factory=dict)   # figure name -> RGBA image
    calibration: str = ""                                          # ECE before -> after temperature scaling
    error: str = ""


def _epoch_axes(fig, best_epoch: int | None = None) -> None:
    """Epoch axes show whole epochs only, and the kept (best) epoch when early stopping chose one."""
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch is not None and best_epoch >= 0:
            # 0: fine-tuning the last block never beat the head trained on the frozen block, which was kept
            label = f"kept: epoch {best_epoch}" if best_epoch else "kept: the head before fine-tuning (epoch 0)"
            ax.axvline(best_epoch, linestyle=":", color="grey", label=label)
            ax.legend(loc="best", fontsize=8)


def _model_figures(metrics: dict, *, history: dict | None = None, uncalibrated: dict | None = None,
                   temperature: float | None = None,
                   colours: FigureColours | None = None) -> dict[str, np.ndarray]:
    """confusion, roc, reliability (+ reliability_raw before temperature scaling, curves) as RGBA images."""
    from xrayviewer.training import metrics as m

    figures = {"confusion": m.confusion_figure(metrics), "roc": m.roc_figure(metrics),
               "reliability": m.reliability_figure(
                   metrics, title="Reliability" if temperature is None else f"After scaling (T = {temperature:.2f})")}
    if uncalibrated is not None:
        figures["reliability_raw"] = m.reliability_figure(uncalibrated, title="Before scaling")
    if history is not None:
        figures["curves"] = m.training_curves_figure(history)
        _epoch_axes(figures["curves"], history.get("best_epoch"))
    for fig in figures.values():
        theme_figure(fig, colours)
    return {name: render_figure(fig) for name, fig in figures.items()}


def build_reports(result: Any, active_bundle: Path | None, *, cancel: threading.Event,
                  colours: FigureColours | None = None) -> tuple[ModelReport, ModelReport | None]:
    """Figures for the new model, then the active model evaluated on the same validation split."""
    new = ModelReport("New model", metrics=result.metrics,
                      figures=_model_figures(result.metrics, history=result.history,
                                             uncalibrated=result.metrics_uncalibrated,
                                             temperature=result.temperature, colours=colours),
                      calibration=(f"ECE {format_number(result.metrics_uncalibrated.get('ece'))} → "
                                   f"{format_number(result.metrics.get('ece'))} after temperature scaling "
                                   f"(T = {result.temperature:.2f}, fitted on the validation split)"))
    if active_bundle is None:
        return new, None
    check_cancel(cancel)
    from xrayviewer.model.bundle import BundleError, load_bundle
    from xrayviewer.training.engine import TrainingError, evaluate_bundle_on_split

    active = ModelReport(f"Active model ({Path(active_bundle).name})", name=Path(active_bundle).name)
    try:
        bundle = load_bundle(active_bundle)
        active.title, active.name = f"Active model: {bundle.name}", bundle.name
        metrics = evaluate_bundle_on_split(active_bundle, result, cancel=cancel)
        if metrics is None:
            raise Cancelled()
        active.metrics = metrics
        active.figures = _model_figures(metrics, colours=colours)
        active.calibration = (f"ECE {format_number(metrics.get('ece'))} with the model's own temperature "
                              f"(T = {bundle.temperature:.2f})")
        validation = result.validation.get("sha256", [])
        seen = _trained_on(bundle, validation)
        if seen:
            active.calibration += (f"<br><span style='color:{ERROR_TEXT}'>{seen} of these {len(validation)} validation "
                                   "images were in this model's own training data: its figures here are "
                                   "optimistic.</span>")
    except Cancelled:
        raise
    except (BundleError, TrainingError) as exc:  # shown beside the new model; the new model's results stand
        active.error = f"Not comparable: {exc}"
    except Exception as exc:  # noqa: BLE001 - any other failure of the old model must not hide the new results
        active.error = f"Could not evaluate the active model on this split: {exc}"
    return new, active


def _trained_on(bundle: Any, sha256s: list[str]) -> int:
    """How many of these files the bundle was trained on, when its model.json lists its training files (else 0)."""
    train = ((bundle.meta.get("training") or {}).get("split") or {}).get("train") or {}
    listed = train.get("sha256") if isinstance(train, dict) else None
    return len(set(sha256s) & set(listed)) if isinstance(listed, list) else 0


def bundle_dir_name(name: str) -> str:
    """A folder name from a model name: letters, digits, '-', '_' and '.'; never empty."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    return slug or "model"


def save_result(result: Any, name: str, dest: Path) -> Path:
    """Write the bundle atomically to `dest` (which must not exist: the dialog never overwrites)."""
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; choose another name.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(result.save(dest, name=name))


# ---------------------------------------------------------------- live curves

def render_live_curves(history: dict[str, list[float]], best_epoch: int | None, colours: FigureColours | None,
                       size: tuple[int, int]) -> tuple[Any, np.ndarray]:
    """The live plot (same builder as the saved plot.png) drawn off-screen at `size` pixels: (Figure, RGBA)."""
    from matplotlib.figure import Figure

    from xrayviewer.training.metrics import training_curves_figure

    width, height = max(size[0], 200), max(size[1], 150)
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, layout="constrained")
    training_curves_figure(history, title="Loss and accuracy per epoch", fig=fig)
    _epoch_axes(fig, best_epoch)
    theme_figure(fig, colours, transparent=False)
    return fig, render_figure(fig)


def _numbered_render(number: int, *args: Any) -> tuple[int, Any, np.ndarray]:
    return (number, *render_live_curves(*args))


class LiveCurves(QWidget):
    """Loss and accuracy per epoch (train and validation), redrawn at most every CURVE_REDRAW_MS.

    Drawn in a worker and shown as a pixmap: a matplotlib draw of this plot takes 80-300 ms, which on the GUI thread
    (competing for the GIL with the training worker) froze the dialog for up to 0.2 s at every redraw.
    """

    EVENT_KEYS = (("loss", "loss"), ("val_loss", "val_loss"), ("accuracy", "acc"), ("val_accuracy", "val_accuracy"))

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.view = FigureView("")
        self.view.setMinimumHeight(220)
        self.figure: Any = None              # the Figure on screen (drawn in a worker; read, never redrawn, here)
        self.history: dict[str, list[float]] = {}
        self.best_epoch: int | None = None
        self.redraws = 0
        self._dirty = False
        self._pending: int | None = None     # id of the render worker whose picture has not arrived yet
        self._number = 0                     # of the newest picture asked for: an older one arriving later is stale
        self._shown_size: tuple[int, int] | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(CURVE_REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        self._resized = QTimer(self)         # re-render at the new size once a resize has settled
        self._resized.setSingleShot(True)
        self._resized.setInterval(150)
        self._resized.timeout.connect(self._size_changed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view)
        self.reset()

    def reset(self) -> None:
        self.history = {key: [] for key, _ in self.EVENT_KEYS}
        self.best_epoch = None
        self._dirty = True
        self._redraw()

    def add_epoch(self, event: dict) -> None:
        for key, event_key in self.EVENT_KEYS:
            value = event.get(event_key)
            self.history[key].append(float("nan") if value is None else float(value))
        self._dirty = True
        if not self._timer.isActive():
            self._timer.start()

    def stop(self, best_epoch: int | None = None) -> None:
        """A last redraw now (marking the kept epoch); the timer stops once it is on screen."""
        self.best_epoch = best_epoch
        self._dirty = self._dirty or best_epoch is not None
        self._redraw()

    def draw_now(self) -> None:
        """Draw every epoch so far on this thread, at once (screenshots; the dialog itself never calls this)."""
        self._dirty = False
        self._number += 1
        self._show(render_live_curves(self._history_copy(), self.best_epoch, FigureColours.of(self),
                                      self._render_size()))

    @property
    def settled(self) -> bool:
        """True when the picture on screen shows every epoch added so far."""
        return not self._dirty and self._pending is None

    def _history_copy(self) -> dict[str, list[float]]:
        return {key: list(values) for key, values in self.history.items()}

    def _render_size(self) -> tuple[int, int]:
        size = self.view.size()
        return size.width(), size.height()

    def _redraw(self) -> None:
        if self._pending is not None:        # one render at a time: the timer comes back for the newest epochs
            if not self._timer.isActive():
                self._timer.start()
            return
        if not self._dirty:
            self._timer.stop()
            return
        self._dirty = False
        self._number += 1
        worker = Worker(_numbered_render, self._number, self._history_copy(), self.best_epoch,
                        FigureColours.of(self), self._render_size())
        worker.signals.returned.connect(self._rendered)
        worker.signals.finished.connect(self._render_finished)
        self._pending = worker.id
        start_worker(worker)
        if not self._timer.isActive():
            self._timer.start()

    def _rendered(self, numbered: tuple[int, Any, np.ndarray]) -> None:
        if numbered[0] == self._number:
            self._show(numbered[1:])

    def _show(self, rendered: tuple[Any, np.ndarray]) -> None:
        self.figure, image = rendered
        self._shown_size = (image.shape[1], image.shape[0])
        self.view.set_image(image)
        self.redraws += 1

    def _render_finished(self, worker_id: int) -> None:
        if worker_id == self._pending:
            self._pending = None

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._resized.start()

    def _size_changed(self) -> None:
        if self._shown_size is not None and self._shown_size != self._render_size():
            self._dirty = True
            self._redraw()


# ---------------------------------------------------------------- pages

class DataPage(QWidget):
    """Folder choice; the check runs in a worker and fills class counts, thumbnails and problems."""

    checked = Signal(object)   # FolderCheck or None

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("A folder with one sub-folder per class (covid/, normal/, …)")
        self.folder_edit.returnPressed.connect(self._folder_entered)
        browse = QPushButton("Choose folder…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)

        self.status = QLabel("Choose a folder of labelled radiographs to start.")
        self.status.setWordWrap(True)
        self.classes_box = QWidget()
        self.classes_grid = QGridLayout(self.classes_box)
        self.classes_grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.classes_box)
        self.problems = QTreeWidget()
        self.problems.setHeaderLabels(["Problems found"])
        self.problems.setRootIsDecorated(True)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(scroll)
        splitter.addWidget(self.problems)
        splitter.setSizes([260, 200])
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(splitter, 1)

        self.result: FolderCheck | None = None
        self.worker: Worker | None = None

    # folder choice
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder with one sub-folder per class",
                                                  self.folder_edit.text())
        if folder:
            self.set_folder(Path(folder))

    def _folder_entered(self) -> None:
        if self.folder_edit.text().strip():
            self.set_folder(Path(self.folder_edit.text().strip()))

    def set_folder(self, folder: Path) -> None:
        """Start checking `folder` (any earlier check is cancelled; its result is ignored)."""
        if self.worker is not None:
            self.worker.cancel()
        self.folder_edit.setText(str(folder))
        self.result = None
        self._clear()
        self.status.setText(f"Checking {folder} …")
        self.checked.emit(None)
        self.worker = Worker(check_folder, Path(folder), tag=str(folder))
        self.worker.signals.returned.connect(self._on_checked)
        self.worker.signals.errored.connect(self._on_error)
        start_worker(self.worker)

    def _clear(self) -> None:
        while self.classes_grid.count():
            widget = self.classes_grid.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        self.problems.clear()

    def _is_current(self) -> bool:
        return self.sender() is not None and self.worker is not None and self.sender() is self.worker.signals

    def _on_error(self, exc: BaseException) -> None:
        if not self._is_current():
            return
        self.status.setText(f"Cannot use this folder: {exc}")
        self.checked.emit(None)

    def _on_checked(self, check: FolderCheck) -> None:
        if not self._is_current():
            return
        self.result = check
        dataset = check.dataset
        counts = dataset.counts()
        errors = [p for p in dataset.problems if p.severity == "error"]
        warnings = [p for p in dataset.problems if p.severity != "error"]
        summary = f"{sum(counts.values())} images in {len(dataset.classes)} classes."
        if errors:
            summary += f"  {len(errors)} error(s) must be fixed before training."
        if warnings:
            summary += f"  {len(warnings)} warning(s)."
        self.status.setText(summary)
        self._fill_classes(dataset.classes, counts, check.thumbnails)
        self._fill_problems(errors + warnings)
        self.checked.emit(check)

    def _fill_classes(self, classes: list[str], counts: dict[str, int], thumbs: dict[str, list]) -> None:
        for row, label in enumerate(classes):
            name = QLabel(f"<b>{label}</b><br>{counts.get(label, 0)} images")
            name.setMinimumWidth(120)
            self.classes_grid.addWidget(name, row, 0)
            for col, image in enumerate(thumbs.get(label, []), start=1):
                thumb = QLabel()
                thumb.setPixmap(pixmap_gray(image))
                thumb.setFixedSize(THUMB_PX + 4, THUMB_PX + 4)
                thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
                thumb.setToolTip(label)
                self.classes_grid.addWidget(thumb, row, col)

    def _fill_problems(self, problems: list) -> None:
        style = self.style()
        icons = {"error": style.standardIcon(style.StandardPixmap.SP_MessageBoxCritical),
                 "warning": style.standardIcon(style.StandardPixmap.SP_MessageBoxWarning)}
        if not problems:
            QTreeWidgetItem(self.problems, ["No problems found."])
        for problem in problems:
            severity = "error" if problem.severity == "error" else "warning"
            top = QTreeWidgetItem(self.problems, [f"{severity.capitalize()}: {problem.message}"])
            top.setIcon(0, icons[severity])
            top.setToolTip(0, problem.message)
            for path in problem.paths[:MAX_LISTED_PATHS]:
                QTreeWidgetItem(top, [str(path)])
            if len(problem.paths) > MAX_LISTED_PATHS:
                QTreeWidgetItem(top, [f"… and {len(problem.paths) - MAX_LISTED_PATHS} more"])
            top.setExpanded(len(problem.paths) <= 5)

    def problem_texts(self) -> list[str]:
        return [self.problems.topLevelItem(i).text(0) for i in range(self.problems.topLevelItemCount())]


class SettingsPage(QWidget):
    """Hyper-parameters with the engine's own defaults (a default TrainingConfig) and a tooltip each."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        from xrayviewer.imaging.scan import DEFAULT_PATIENT_PATTERN, MAX_IMBALANCE
        from xrayviewer.model.backbone import available_bases
        from xrayviewer.training.engine import TrainingConfig
        from xrayviewer.training.features import Augmentation

        d = TrainingConfig()
        aug = d.augmentation or Augmentation()
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)

        self.base = QComboBox()
        for base_id, spec in available_bases().items():
            self.base.addItem(spec.description, base_id)
        self.base.setCurrentIndex(max(0, self.base.findData(d.base_id)))
        self.base.setToolTip("The frozen conv base. Its features are computed once per image (and variant) and "
                             "cached, so each epoch trains only the small head on top.")
        form.addRow("Base", self.base)

        self.input_size = QComboBox()
        for size, words in ((224, "fast"), (336, "as the shipped default model")):
            self.input_size.addItem(f"{size} × {size} ({words})", size)
        self.input_size.setCurrentIndex(max(0, self.input_size.findData(d.input_size[0])))
        self.input_size.setToolTip(
            "Size the radiographs are resized to before the base. 336 keeps more detail: measured on the shipped "
            "data it raised NIH pneumonia vs normal from AUC 0.82 to 0.89 (cross-validated) and gives finer "
            "heatmaps (42 × 42 instead of 28 × 28), at about 2.3 × the compute per image.")
        form.addRow("Input size", self.input_size)

        self.epochs = _spin(1, 1000, d.epochs, "Passes over the training images. Epochs on cached features take "
                            "a fraction of a second; early stopping may end sooner.")
        form.addRow("Epochs", self.epochs)
        self.batch_size = _spin(1, 1024, d.batch_size, "Images (feature vectors) per gradient step.")
        form.addRow("Batch size", self.batch_size)
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(1e-5, 1.0)
        self.learning_rate.setSingleStep(1e-4)
        self.learning_rate.setValue(d.learning_rate)
        self.learning_rate.setToolTip("Adam learning rate of the head.")
        form.addRow("Learning rate", self.learning_rate)
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.05, 0.5)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(d.val_fraction)
        self.val_fraction.setToolTip("Share of patients held out for validation. Every metric on the Results page "
                                     "is measured on them only, and temperature scaling is fitted on them.")
        form.addRow("Validation fraction", self.val_fraction)
        self.seed = _spin(0, 2**31 - 1, d.seed, "Seed of the split and of the head's initial weights: the same "
                          "seed and settings give the same split.")
        form.addRow("Seed", self.seed)

        self.split_by_patient = QCheckBox("Split by patient (no patient on both sides of the split)")
        self.split_by_patient.setChecked(d.split_by != "file")
        self.split_by_patient.setToolTip("Images of one patient look alike; letting them land on both sides of the "
                                         "split inflates every metric.")
        self.patient_origin = QLabel()
        self.patient_origin.setWordWrap(True)
        self.default_pattern = d.patient_pattern or DEFAULT_PATIENT_PATTERN   # what discover_dataset applied
        self.patient_pattern = QLineEdit(self.default_pattern)
        self.patient_pattern.setPlaceholderText(r"e.g. ^(?P<patient>[^_]+)_  (a regular expression)")
        self.patient_pattern.setToolTip("Regular expression matched at the start of each file name without its "
                                        "extension, ignoring case: the whole match is the patient id. Files it does "
                                        "not match count as one patient each. Not used when the folder has a "
                                        "manifest.csv with a patient_id column.")
        self.patient_pattern.textChanged.connect(self._update_patient_origin)
        self.split_by_patient.toggled.connect(self._update_patient_origin)
        split_box = QVBoxLayout()
        split_box.addWidget(self.split_by_patient)
        pattern_row = QHBoxLayout()
        pattern_row.addWidget(QLabel("Patient id from file names:"))
        pattern_row.addWidget(self.patient_pattern, 1)
        split_box.addLayout(pattern_row)
        split_box.addWidget(self.patient_origin)
        form.addRow("Split", split_box)

        self.class_weights = QCheckBox("Weight classes by inverse frequency")
        self.class_weights.setChecked(d.class_weights)
        self.class_weights.setToolTip("For imbalanced folders: errors on a rare class then cost as much in total as "
                                      "errors on a common one. Switched on by itself when the largest class has "
                                      f"more than {MAX_IMBALANCE:g} times the images of the smallest.")
        self._class_weights_chosen = False
        self.class_weights.clicked.connect(self._on_class_weights_clicked)
        form.addRow("Class weights", self.class_weights)
        self.early_stopping = QCheckBox("Stop when the validation loss stops improving (keeps the best epoch)")
        self.early_stopping.setChecked(d.early_stopping)
        self.early_stopping.setToolTip("Ends training once the validation loss has not improved for 'patience' "
                                       "epochs and restores the weights of the best epoch.")
        self.patience = _spin(1, 100, d.patience, "Epochs without improvement of the validation loss before "
                              "training stops.")
        self.early_stopping.toggled.connect(self.patience.setEnabled)
        stop_row = QHBoxLayout()
        stop_row.addWidget(self.early_stopping)
        stop_row.addWidget(QLabel("patience:"))
        stop_row.addWidget(self.patience)
        stop_row.addStretch(1)
        form.addRow("Early stopping", stop_row)

        self.augmentation = QCheckBox(f"Rotation ±{aug.rotation_deg:g}°, zoom ±{aug.zoom:.0%}, "
                                      f"shear ±{aug.shear_deg:g}°, shift ±{aug.shift:.0%}")
        self.augmentation.setChecked(d.augmentation is not None)
        self.augmentation.setToolTip("Random affine variants of each training image (seeded by the file's content, "
                                     "so a file gets the same variants every run). The base runs once per variant "
                                     "and the features are cached.")
        self.hflip = QCheckBox("Horizontal flip")
        self.hflip.setChecked(aug.horizontal_flip)
        self.hflip.setToolTip("Off by default: a horizontal flip swaps the heart and lung sides (the heart would "
                              "sit on the right), which real PA/AP chest radiographs never show.")
        self.variants = _spin(1, 64, d.variants, "K feature variants per training image (variant 0 is the image "
                              "itself). More variants: slower first run, more varied training data; later runs "
                              "read them from the cache.")
        self.augmentation.toggled.connect(self.hflip.setEnabled)
        self.augmentation.toggled.connect(self.variants.setEnabled)
        aug_box = QVBoxLayout()
        aug_box.addWidget(self.augmentation)
        aug_row = QHBoxLayout()
        aug_row.addWidget(self.hflip)
        aug_row.addSpacing(24)
        aug_row.addWidget(QLabel("Variants per image (K):"))
        aug_row.addWidget(self.variants)
        aug_row.addStretch(1)
        aug_box.addLayout(aug_row)
        form.addRow("Augmentation", aug_box)

        self.finetune_last_block = QCheckBox("Also fine-tune the last conv block (slower, lower learning rate)")
        self.finetune_last_block.setChecked(d.finetune_last_block)
        self.block_lr_factor = d.block_lr_factor
        self.finetune_hint = QLabel()
        self.finetune_hint.setWordWrap(True)
        # the full width of the form, like the split's explanation (a wrapped label alone wraps at its hint width)
        self.finetune_hint.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        finetune_box = QVBoxLayout()
        finetune_box.addWidget(self.finetune_last_block)
        finetune_box.addWidget(self.finetune_hint)
        form.addRow("Fine-tuning", finetune_box)
        for signal in (self.base.currentIndexChanged, self.input_size.currentIndexChanged,
                       self.finetune_last_block.toggled,
                       self.learning_rate.valueChanged, self.val_fraction.valueChanged, self.epochs.valueChanged):
            signal.connect(self._update_finetune)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addStretch(1)
        self.dataset: Any = None
        self._update_patient_origin()
        self._update_finetune()

    def set_dataset(self, dataset: Any) -> None:
        """A newly checked folder: say where its patient ids come from; weight classes if it is imbalanced."""
        from xrayviewer.imaging.scan import MAX_IMBALANCE

        self.dataset = dataset
        counts = [n for n in (dataset.counts().values() if dataset is not None else []) if n]
        if counts and not self._class_weights_chosen:   # the user's own choice stands
            self.class_weights.setChecked(max(counts) / min(counts) > MAX_IMBALANCE)
        self._update_patient_origin()
        self._update_finetune()

    def _update_finetune(self) -> None:
        """The fine-tuning option for the chosen base: available or why not, its cost and its learning rates."""
        from xrayviewer.training.finetune import SECONDS_PER_EPOCH_PER_100, estimated_epoch_seconds, last_block_name

        base_id = self.base.currentData()
        unavailable = _unsupported_reason(base_id=base_id, finetune_last_block=True)
        box = self.finetune_last_block
        if unavailable:
            box.setChecked(False)
            box.setEnabled(False)
            box.setToolTip(f"Not available: {unavailable}")
            self.finetune_hint.setText("")
            self.learning_rate.setToolTip("Adam learning rate of the head.")
            return
        box.setEnabled(True)
        block = last_block_name(base_id)
        block_lr = self.learning_rate.value() * self.block_lr_factor
        box.setToolTip(f"Also trains {block} (the last conv block of the base) together with the head. Slower: "
                       f"{block} runs forward and backward on every training image in every epoch, about "
                       f"{SECONDS_PER_EPOCH_PER_100:.0f} s per epoch per 100 images on a 2-core machine (the blocks "
                       f"before it still run once per image, cached). It uses a lower learning rate for {block} "
                       f"({self.block_lr_factor:g} × the head's) so its pretrained filters are adjusted, not "
                       "overwritten. The saved model then carries all its weights (tens of MB instead of about "
                       "0.1 MB).")
        if not box.isChecked():
            self.finetune_hint.setText("")
            self.learning_rate.setToolTip("Adam learning rate of the head.")
            return
        self.learning_rate.setToolTip(f"Adam learning rate of the head; {block} is fine-tuned at "
                                      f"{self.block_lr_factor:g} × this ({block_lr:.1e}).")
        text = f"Learning rates: head {self.learning_rate.value():g}, {block} {block_lr:.1e}."
        n_images = len(self.dataset.items) if self.dataset is not None else 0
        if n_images:
            n_val = max(1, round(n_images * self.val_fraction.value()))
            size = int(self.input_size.currentData())
            per_epoch = estimated_epoch_seconds(n_images - n_val, (size, size))
            text += (f" About {format_duration(per_epoch)} per epoch for about {n_images - n_val} training images, up to "
                     f"{format_duration(per_epoch * self.epochs.value())} for {self.epochs.value()} epochs "
                     "(early stopping may end sooner).")
        self.finetune_hint.setText(text)

    def _on_class_weights_clicked(self) -> None:
        self._class_weights_chosen = True

    def split_by(self) -> str:
        """The engine's split_by: auto (the dataset's own ids), pattern (only when the user edited it), or file."""
        if not self.split_by_patient.isChecked():
            return "file"
        origin = getattr(self.dataset, "patient_id_origin", None)
        pattern = self.patient_pattern.text().strip()
        if origin != "manifest" and not pattern:
            return "file"
        if origin != "manifest" and pattern != self.default_pattern:
            return "pattern"
        return "auto"

    def _update_patient_origin(self) -> None:
        """Say which patient ids the split uses: manifest column, the (editable) file-name pattern, or per file."""
        by_patient = self.split_by_patient.isChecked()
        origin = getattr(self.dataset, "patient_id_origin", None)
        self.patient_pattern.setEnabled(by_patient and origin != "manifest")
        if not by_patient:
            text = "Split file by file: images of one patient may land on both sides, which flatters the metrics."
        elif self.dataset is None:
            text = ("Patient ids come from the folder's manifest.csv if it has one, else from the file-name pattern, "
                    "else each file is its own patient.")
        elif origin == "manifest":
            text = "Using patient ids from the patient_id column of the folder's manifest.csv."
        elif self.split_by() == "pattern":
            text = self._pattern_summary()
        elif origin == "pattern":
            n_patients = len({item.patient_id for item in self.dataset.items})
            text = (f"Using patient ids from the file names (the pattern above): {n_patients} patients among "
                    f"{len(self.dataset.items)} images. Edit the pattern if your file names carry the id differently.")
        else:
            text = ("Using one patient per file: no manifest.csv, and the pattern finds no patient id in the file "
                    "names. If one patient has several images, edit the pattern to extract the id.")
        self.patient_origin.setText(text)

    def _pattern_summary(self) -> str:
        from xrayviewer.training.engine import TrainingError, patient_groups

        try:
            groups, _origin = patient_groups(self.dataset, self.config())
        except (TrainingError, re.error) as exc:
            return f"<span style='color:{ERROR_TEXT}'>{exc}</span>"
        matched = sum(1 for g in groups if g.startswith("pattern:"))
        if not matched:
            return "The pattern matches no file name: each file counts as its own patient."
        return (f"Using patient ids from file names: the pattern matches {matched} of {len(groups)} files "
                f"({len(set(groups))} patients; files it does not match count as one patient each).")

    def pattern_error(self) -> str:
        """'' when the pattern is usable, else why not."""
        try:
            re.compile(self.patient_pattern.text())
        except re.error as exc:
            return f"The patient file-name pattern is not a valid regular expression: {exc}"
        return ""

    def config(self):
        """The TrainingConfig the widgets describe."""
        from xrayviewer.training.engine import TrainingConfig
        from xrayviewer.training.features import Augmentation

        return TrainingConfig(
            base_id=self.base.currentData(),
            input_size=(int(self.input_size.currentData()),) * 2,
            epochs=self.epochs.value(),
            batch_size=self.batch_size.value(),
            learning_rate=self.learning_rate.value(),
            val_fraction=self.val_fraction.value(),
            seed=self.seed.value(),
            split_by=self.split_by(),
            patient_pattern=self.patient_pattern.text().strip() or None,
            class_weights=self.class_weights.isChecked(),
            early_stopping=self.early_stopping.isChecked(),
            patience=self.patience.value(),
            augmentation=(Augmentation(horizontal_flip=self.hflip.isChecked())
                          if self.augmentation.isChecked() else None),
            variants=self.variants.value(),
            finetune_last_block=self.finetune_last_block.isChecked(),
            block_lr_factor=self.block_lr_factor,
        )


def _unsupported_reason(**settings: Any) -> str:
    """'' when the engine accepts these settings, else its reason (e.g. an option this version does not have)."""
    from xrayviewer.training.engine import TrainingConfig, TrainingError

    try:
        TrainingConfig(**settings).check()
    except TrainingError as exc:
        return str(exc)
    return ""


def _spin(lo: int, hi: int, value: Any, tip: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(int(value))
    box.setToolTip(tip)
    return box


class TrainingPage(QWidget):
    """Stage, per-batch progress, epoch counter, time left, live curves and the log."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.stage = QLabel("Not started.")
        self.stage.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setFormat("batch %v / %m")
        self.epoch_label = QLabel("Epoch –")
        self._planned_epochs = 0
        self._features_started: tuple[float, int] | None = None
        self.eta_label = QLabel("")
        counters = QHBoxLayout()
        counters.addWidget(self.epoch_label)
        counters.addStretch(1)
        counters.addWidget(self.eta_label)
        self.curves = LiveCurves()
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.log.setPlaceholderText("Training log")
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.curves)
        splitter.addWidget(self.log)
        splitter.setSizes([320, 140])
        layout = QVBoxLayout(self)
        layout.addWidget(self.stage)
        layout.addWidget(self.bar)
        layout.addLayout(counters)
        layout.addWidget(splitter, 1)

    def reset(self) -> None:
        self.stage.setText("Starting…")
        self.bar.setRange(0, 0)      # busy until the first batch says how many there are
        self.epoch_label.setText("Epoch –")
        self._planned_epochs = 0
        self._features_started: tuple[float, int] | None = None
        self.eta_label.setText("")
        self.log.clear()
        self.curves.reset()

    def on_event(self, event: dict) -> None:
        kind = event.get("kind")
        if kind == "stage":
            self.stage.setText(str(event.get("text", "")))
            self.append_log(str(event.get("text", "")))
        elif kind == "features":
            done, total = int(event.get("done", 0)), int(event.get("total", 0))
            self.bar.setFormat("base features %v / %m")
            self.bar.setRange(0, total)
            self.bar.setValue(done)
            now = time.monotonic()
            if done == 0 or self._features_started is None:
                self._features_started = (now, done)
            started, done_then = self._features_started
            if done > done_then and total > done:   # time left from this run's own pace
                eta = (now - started) / (done - done_then) * (total - done)
                self.eta_label.setText(f"base features: about {format_duration(eta)} left")
        elif kind == "batch":
            self.bar.setFormat("batch %v / %m")
            self.bar.setRange(0, int(event.get("batches", 0)))
            self.bar.setValue(int(event.get("batch", 0)))
        elif kind == "epoch":
            self._planned_epochs = int(event.get("epochs") or 0)
            self.epoch_label.setText(f"Epoch {event['epoch']} / {event.get('epochs', '?')}")
            eta = event.get("eta_seconds")
            self.eta_label.setText("" if eta is None else f"about {format_duration(eta)} left")
            self.curves.add_epoch(event)
            self.append_log(_epoch_line(event))
        elif kind == "log":
            self.append_log(str(event.get("text", "")))
        elif kind == "done":
            self.eta_label.setText("")
            run, planned = len(self.curves.history["loss"]), self._planned_epochs
            if planned and 0 < run < planned:
                self.epoch_label.setText(f"Epoch {run} / {planned} — stopped early: the validation loss had "
                                         "stopped improving (the best epoch's weights are kept)")

    def append_log(self, text: str) -> None:
        if text:
            self.log.appendPlainText(text)


def _epoch_line(event: dict) -> str:
    parts = [f"epoch {event['epoch']}/{event.get('epochs', '?')}",
             f"loss {format_number(event.get('loss'))}", f"acc {format_number(event.get('acc'))}",
             f"val_loss {format_number(event.get('val_loss'))}", f"val_acc {format_number(event.get('val_accuracy'))}"]
    if event.get("seconds") is not None:
        parts.append(f"{float(event['seconds']):.1f} s")
    return "  ".join(parts)


# (metric key, column title, header tooltip)
PER_CLASS_COLUMNS = (("precision", "Precision", "Share of images called this class that are this class"),
                     ("recall", "Recall", "Share of this class's images called this class"),
                     ("f1", "F1", "Harmonic mean of precision and recall"),
                     ("sensitivity", "Sens.", "Sensitivity (one vs rest) = recall: true positive rate"),
                     ("specificity", "Spec.", "Specificity (one vs rest): share of the other classes' images "
                                              "not called this class"),
                     ("auc", "AUC", "Area under the one-vs-rest ROC curve"),
                     ("support", "n", "Validation images of this class"))


class ModelColumn(QWidget):
    """One model's metrics: a summary, the per-class table and the confusion matrix."""

    def __init__(self, title: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = QLabel(f"<b>{title}</b>")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = QTableWidget(0, len(PER_CLASS_COLUMNS))
        for col, (_key, title, tip) in enumerate(PER_CLASS_COLUMNS):
            header = QTableWidgetItem(title)
            header.setToolTip(tip)
            self.table.setHorizontalHeaderItem(col, header)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.confusion = FigureView("")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        layout.addWidget(self.confusion, 1)

    def show_message(self, title: str, text: str) -> None:
        self.title.setText(f"<b>{title}</b>")
        self.summary.setText(text)
        self.table.setRowCount(0)
        self.table.setVisible(False)
        self.confusion.clear_image()

    def show_report(self, report: ModelReport) -> None:
        if report.error or report.metrics is None:
            self.show_message(report.title, report.error or "No metrics.")
            return
        self.title.setText(f"<b>{report.title}</b>")
        m = report.metrics
        self.summary.setText(summary_text(m) + (f"<br>{report.calibration}" if report.calibration else ""))
        per_class = m.get("per_class", {})
        self.table.setRowCount(len(per_class))
        self.table.setVerticalHeaderLabels(list(per_class))
        for row, (label, values) in enumerate(per_class.items()):
            for col, (key, _title, _tip) in enumerate(PER_CLASS_COLUMNS):
                value = values.get(key)
                text = str(int(value)) if key == "support" and value is not None else format_number(value)
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, col, item)
        self.table.setVisible(True)
        self._fit_table_height()
        if "confusion" in report.figures:
            self.confusion.set_image(report.figures["confusion"])

    def _fit_table_height(self) -> None:
        """As tall as its rows (up to 8, then it scrolls), so the confusion matrix gets the rest."""
        rows = min(self.table.rowCount(), 8)
        height = (self.table.horizontalHeader().sizeHint().height() + 2 * self.table.frameWidth()
                  + rows * self.table.verticalHeader().defaultSectionSize())
        self.table.setFixedHeight(height + 2)


def summary_text(m: dict) -> str:
    """Accuracy, balanced accuracy, macro F1 / AUC in one line a person reads at a glance."""
    parts = [f"{int(m['n'])} validation images"] if m.get("n") is not None else []
    parts.append(f"accuracy {format_number(m.get('accuracy'))}")
    if m.get("balanced_accuracy") is not None:
        parts.append(f"balanced accuracy {format_number(m['balanced_accuracy'])}")
    f1s = [v["f1"] for v in m.get("per_class", {}).values() if v.get("f1") is not None]
    if f1s:
        parts.append(f"macro F1 {format_number(sum(f1s) / len(f1s))}")
    if m.get("macro_auc") is not None:
        parts.append(f"macro AUC {format_number(m['macro_auc'])}")
    return " · ".join(parts)


# Figure tabs: (tab title, ((which model, figure key, caption), ...)) — each view shows one rendered figure.
FIGURE_TABS = (
    ("ROC curves", (("new", "roc", "New model"), ("active", "roc", "{active}"))),
    ("Calibration", (("new", "reliability_raw", "New model, before temperature scaling"),
                     ("new", "reliability", "New model, after temperature scaling"),
                     ("active", "reliability", "{active}, with its own temperature"))),
    ("Training curves", (("new", "curves", "New model (saved in the bundle as plot.png)"),)),
)


class ResultsPage(QWidget):
    """New model beside the active model on the same validation split; Save and Use in viewer."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.tabs = QTabWidget()
        metrics_tab = QWidget()
        cols = QHBoxLayout(metrics_tab)
        self.new_column = ModelColumn("New model")
        self.active_column = ModelColumn("Active model")
        cols.addWidget(self.new_column, 1)
        cols.addSpacing(12)
        cols.addWidget(self.active_column, 1)
        self.tabs.addTab(metrics_tab, "Metrics")
        self.figure_views: list[tuple[str, str, FigureView]] = []
        self.active_captions: list[tuple[QLabel, str]] = []
        for title, views in FIGURE_TABS:
            tab = QWidget()
            row = QHBoxLayout(tab)
            for which, key, caption in views:
                label = QLabel(f"<b>{caption}</b>")
                label.setAlignment(Qt.AlignmentFlag.AlignHCenter)
                label.setWordWrap(True)    # long model names wrap instead of widening their column
                label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
                if which == "active":
                    self.active_captions.append((label, caption))
                    label.setText(f"<b>{caption.format(active='Active model')}</b>")
                view = FigureView("…")
                column = QVBoxLayout()
                column.addWidget(label)
                column.addWidget(view, 1)
                row.addLayout(column, 1)
                self.figure_views.append((which, key, view))
            self.tabs.addTab(tab, title)
        from xrayviewer.ui.audit_dialog import TrainingAuditPanel  # here: audit_dialog reuses this module's widgets

        self.audit_panel = TrainingAuditPanel()
        self.tabs.addTab(self.audit_panel, "Audit")

        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("Name of the new model")
        self.save_button = QPushButton("Save")
        self.save_button.setToolTip("Save as a new model bundle in your models folder (never overwrites one).")
        self.use_button = QPushButton("Use in viewer")
        self.use_button.setToolTip("Load the saved model in the viewer.")
        self.use_button.setEnabled(False)
        self.save_status = QLabel("")
        self.save_status.setWordWrap(True)
        self.save_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        save_row = QHBoxLayout()
        save_row.addWidget(QLabel("Name:"))
        save_row.addWidget(self.name_edit, 1)
        save_row.addWidget(self.save_button)
        save_row.addWidget(self.use_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 1)
        layout.addLayout(save_row)
        layout.addWidget(self.save_status)

    def reset(self) -> None:
        self.new_column.show_message("New model", "Preparing the results…")
        self.active_column.show_message("Active model", "Evaluating the active model on the same validation split…")
        for _which, _key, view in self.figure_views:
            view.clear_image("…")
        self.save_status.setText("")
        self.use_button.setEnabled(False)
        self.save_button.setEnabled(False)
        self.audit_panel.set_result(None)

    def show_reports(self, new: ModelReport, active: ModelReport | None) -> None:
        self.new_column.show_report(new)
        if active is None:
            self.active_column.show_message("Active model", "No model is active in the viewer: nothing to compare.")
        else:
            self.active_column.show_report(active)
        for label, caption in self.active_captions:
            named = f"Active model: {active.name}" if active is not None and active.name else "Active model"
            label.setText(f"<b>{caption.format(active=named)}</b>")
        for which, key, view in self.figure_views:
            report = new if which == "new" else active
            if report is None:
                view.clear_image("No model is active in the viewer: nothing to compare.")
            elif key in report.figures:
                view.set_image(report.figures[key])
            else:
                view.clear_image(report.error or "Not available.")


# ---------------------------------------------------------------- the dialog

class TrainingDialog(QDialog):
    """Data → Settings → Training → Results. `window` is the main window (or None when used alone)."""

    def __init__(self, window: Any = None, parent: QWidget | None = None):
        super().__init__(parent if parent is not None else (window if isinstance(window, QWidget) else None))
        self.window_ = window
        self.setWindowTitle("Train a model on your own folder")
        self.resize(1000, 720)
        self.setSizeGripEnabled(True)

        self.steps = QLabel()
        self.data_page = DataPage()
        self.settings_page = SettingsPage()
        self.training_page = TrainingPage()
        self.results_page = ResultsPage()
        self.pages = QStackedWidget()
        for page in (self.data_page, self.settings_page, self.training_page, self.results_page):
            self.pages.addWidget(page)

        self.back_button = QPushButton("Back")
        self.next_button = QPushButton("Next")
        self.start_button = QPushButton("Start training")
        self.start_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel training")
        self.cancel_button.setToolTip("Stops within about a second; nothing is saved and no model changes.")
        self.close_button = QPushButton("Close")
        buttons = QHBoxLayout()
        buttons.addWidget(self.back_button)
        buttons.addStretch(1)
        for b in (self.next_button, self.start_button, self.cancel_button, self.close_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(self.steps)
        layout.addWidget(self.pages, 1)
        layout.addLayout(buttons)

        self.back_button.clicked.connect(self._back)
        self.next_button.clicked.connect(self._next)
        self.start_button.clicked.connect(self.start_training)
        self.cancel_button.clicked.connect(self.cancel_training)
        self.close_button.clicked.connect(self.close)
        self.data_page.checked.connect(self._on_folder_checked)
        self.results_page.save_button.clicked.connect(self.save)
        self.results_page.use_button.clicked.connect(self.use_in_viewer)

        self.train_worker: Worker | None = None
        self.report_worker: Worker | None = None
        self.save_worker: Worker | None = None    # the save in progress; None once its outcome reached this thread
        self.result: Any = None
        self.saved_path: Path | None = None
        self._close_when_stopped = False
        self._go(0)

    # navigation ----------------------------------------------------------------------------------------------
    @property
    def page_index(self) -> int:
        return self.pages.currentIndex()

    def _go(self, index: int) -> None:
        self.pages.setCurrentIndex(index)
        self.steps.setText("  ›  ".join(f"<b>{i + 1} {name}</b>" if i == index else f"{i + 1} {name}"
                                        for i, name in enumerate(PAGES)))
        self._update_buttons()

    def _update_buttons(self) -> None:
        index, training = self.page_index, self.is_training()
        check = self.data_page.result
        dataset_ok = check is not None and bool(check.dataset.ok)
        self.back_button.setVisible(index in (1, 2, 3))
        self.back_button.setEnabled(not training)
        self.next_button.setVisible(index == 0)
        self.next_button.setEnabled(dataset_ok)
        self.start_button.setVisible(index in (0, 1))
        self.start_button.setEnabled(dataset_ok and not training)
        self.start_button.setToolTip("" if dataset_ok else "Choose a folder without errors first.")
        self.cancel_button.setVisible(index == 2)
        self.cancel_button.setEnabled(training)

    def _back(self) -> None:
        """Results and Training go back to Settings (to change something and train again)."""
        self._go(0 if self.page_index == 1 else 1)

    def _next(self) -> None:
        self._go(min(self.page_index + 1, 1))

    def _on_folder_checked(self, check: FolderCheck | None) -> None:
        self.settings_page.set_dataset(None if check is None else check.dataset)
        self._update_buttons()

    # training ------------------------------------------------------------------------------------------------
    def is_training(self) -> bool:
        return self.train_worker is not None and not self.train_worker.done.is_set()

    def start_training(self) -> None:
        check = self.data_page.result
        if check is None or not check.dataset.ok or self.is_training():
            return
        problem = self.settings_page.pattern_error()
        if problem:
            self._go(1)
            self.settings_page.patient_origin.setText(f"<span style='color:{ERROR_TEXT}'>{problem}</span>")
            return
        config = self.settings_page.config()
        self.result = None
        self.saved_path = None
        self.training_page.reset()
        self.results_page.reset()
        self.train_worker = Worker(run_training, check.dataset, config, tag="train")
        sig = self.train_worker.signals
        sig.progress.connect(self.training_page.on_event)
        sig.returned.connect(self._on_trained)
        sig.errored.connect(self._on_train_error)
        sig.aborted.connect(self._on_train_aborted)
        sig.finished.connect(self._on_train_finished)
        start_worker(self.train_worker)
        self._go(2)

    def cancel_training(self) -> None:
        """Stop the run (the worker's own cancel: its thread is busy in the engine, a queued signal would wait)."""
        if self.is_training():
            self.train_worker.cancel()
            self.training_page.stage.setText("Cancelling…")
            self.cancel_button.setEnabled(False)

    def _on_trained(self, result: Any) -> None:
        self.result = result
        self.training_page.curves.stop(result.history.get("best_epoch"))
        self.training_page.stage.setText("Training finished.")
        self.training_page.append_log("Training finished.")
        self.results_page.name_edit.setText(self._suggest_name())
        self._go(3)
        self.results_page.audit_panel.set_result(result, self.window_)
        self.report_worker = Worker(build_reports, result, self.active_bundle_path(),
                                    colours=FigureColours.of(self), tag="reports")
        self.report_worker.signals.returned.connect(self._on_reports)
        self.report_worker.signals.errored.connect(self._on_reports_error)
        start_worker(self.report_worker)

    def _on_train_error(self, exc: BaseException) -> None:
        self.training_page.curves.stop()
        self.training_page.stage.setText(f"Training failed: {exc}")
        self.training_page.append_log(f"Training failed: {exc}")
        self.training_page.bar.setRange(0, 1)

    def _on_train_aborted(self, _worker_id: Any) -> None:
        self.training_page.curves.stop()
        self.training_page.stage.setText("Training cancelled. Nothing was saved; your models are unchanged.")
        self.training_page.append_log("Cancelled.")
        self.training_page.bar.setRange(0, 1)
        self.training_page.bar.setValue(0)

    def _on_train_finished(self, _worker_id: Any) -> None:
        self._update_buttons()
        if self._close_when_stopped:
            self._close_when_stopped = False
            self.close()

    def _suggest_name(self) -> str:
        root = Path(self.data_page.folder_edit.text() or "model").name or "model"
        return f"{root} {time.strftime('%Y-%m-%d %H.%M')}"

    # results -------------------------------------------------------------------------------------------------
    def active_bundle_path(self) -> Path | None:
        service = getattr(self.window_, "model_service", None)
        path = getattr(service, "bundle_path", None)
        return Path(path) if path else None

    def _on_reports(self, reports: tuple[ModelReport, ModelReport | None]) -> None:
        self.results_page.show_reports(*reports)
        self.results_page.save_button.setEnabled(True)

    def _on_reports_error(self, exc: BaseException) -> None:
        self.results_page.new_column.show_message("New model", f"Could not build the results: {exc}")
        self.results_page.save_button.setEnabled(self.result is not None)

    def save(self) -> None:
        # "Saving" ends when the outcome arrives here (the same moment Save is re-enabled), not when the pool thread
        # finishes a moment later: a quick second click must not be ignored.
        if self.result is None or self.save_worker is not None:
            return
        from xrayviewer.paths import user_models_dir

        name = self.results_page.name_edit.text().strip()
        if not name:
            self.results_page.save_status.setText("Give the model a name first.")
            return
        dest = user_models_dir() / bundle_dir_name(name)
        if dest.exists():  # never overwrite: the user picks another name
            self.results_page.save_status.setText(f"A model folder named “{dest.name}” already exists in "
                                                  f"{dest.parent}; choose another name.")
            return
        self.results_page.save_button.setEnabled(False)
        self.results_page.save_status.setText(f"Saving to {dest} …")
        self.save_worker = Worker(save_result, self.result, name, dest, tag="save")
        self.save_worker.signals.returned.connect(self._on_saved)
        self.save_worker.signals.errored.connect(self._on_save_error)
        start_worker(self.save_worker)

    def _on_saved(self, path: Path) -> None:
        self.save_worker = None
        self.saved_path = Path(path)
        self.results_page.save_status.setText(f"Saved “{self.results_page.name_edit.text().strip()}” to {path}")
        self.results_page.use_button.setEnabled(hasattr(self.window_, "use_model"))
        self.results_page.save_button.setEnabled(True)   # another copy under another name is fine; same name is not

    def _on_save_error(self, exc: BaseException) -> None:
        self.save_worker = None
        self.results_page.save_status.setText(f"Not saved: {exc}")
        self.results_page.save_button.setEnabled(True)

    def use_in_viewer(self) -> None:
        if self.saved_path is not None and hasattr(self.window_, "use_model"):
            self.window_.use_model(self.saved_path)

    # closing -------------------------------------------------------------------------------------------------
    def _may_close(self) -> bool:
        """True when nothing is training. While training, ask; on "Yes" cancel and close once the worker stopped."""
        if not self.is_training():
            return True
        answer = QMessageBox.question(self, "Training is running",
                                      "Stop the training and close? Nothing will be saved.",
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        if answer == QMessageBox.StandardButton.Yes:
            self._close_when_stopped = True   # closes from _on_train_finished: the GUI thread never waits
            self.cancel_training()
        return False

    def _stop_helpers(self) -> None:
        for worker in (self.data_page.worker, self.report_worker):
            if worker is not None:
                worker.cancel()
        self.results_page.audit_panel.cancel()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override (window close button, close())
        if not self._may_close():
            event.ignore()
            return
        self._stop_helpers()
        super().closeEvent(event)         # QDialog's closeEvent calls reject()

    def reject(self) -> None:  # Esc and QDialog's own close path
        if self._may_close():
            self._stop_helpers()
            super().reject()


# ---------------------------------------------------------------- install into the main window

class _Launcher(QObject):
    """Owns the dialogs opened from the menu; a child of the window so it lives as long as the window.

    Also guards the window: closing it while a training runs asks first, like closing the dialog does.
    """

    def __init__(self, window: Any):
        super().__init__(window if isinstance(window, QObject) else None)
        self.window_ = window
        self.training_dialog: TrainingDialog | None = None
        self.models_manager: QDialog | None = None
        if isinstance(window, QObject):
            window.installEventFilter(self)

    def open_training(self) -> TrainingDialog:
        if self.training_dialog is None or not self.training_dialog.isVisible():
            if self.training_dialog is not None:
                self.training_dialog.deleteLater()     # a closed dialog is not reused: each run starts fresh
            self.training_dialog = TrainingDialog(self.window_)
        self.training_dialog.show()
        self.training_dialog.raise_()
        self.training_dialog.activateWindow()
        return self.training_dialog

    def open_models_manager(self) -> QDialog:
        from xrayviewer.ui.models_manager import ModelsManagerDialog

        if self.models_manager is None or not self.models_manager.isVisible():
            if self.models_manager is not None:
                self.models_manager.deleteLater()
            self.models_manager = ModelsManagerDialog(self.window_)
        self.models_manager.show()
        self.models_manager.raise_()
        return self.models_manager

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if watched is self.window_ and event.type() == QEvent.Type.Close:
            dialog = self.training_dialog
            if dialog is not None and dialog.is_training():
                answer = QMessageBox.question(self.window_, "Training is running",
                                              "A training is running. Stop it and quit? Nothing will be saved.",
                                              QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                              QMessageBox.StandardButton.No)
                if answer != QMessageBox.StandardButton.Yes:
                    event.ignore()
                    return True                        # the window stays open, the training goes on
                dialog.cancel_training()               # the window's shutdown then waits for the worker
        return False


def warm_up() -> None:
    """Import what the dialog needs (matplotlib figures, the engine, the dataset scanner: ~1 s together) and draw
    one small figure (matplotlib's font cache) in the background, so opening the dialog and its first live plot
    later do not freeze the window."""
    import xrayviewer.imaging.scan  # noqa: F401
    import xrayviewer.training.engine  # noqa: F401
    from xrayviewer.training.metrics import training_curves_figure

    render_figure(training_curves_figure({"loss": [1.0, 0.5]}))


def install(window: Any) -> _Launcher:
    """Add "Train…" (Ctrl+T) and "Manage models…" to the window's Model menu."""
    start_worker(Worker(warm_up, tag="training-dialog-warm-up"))
    launcher = _Launcher(window)
    menu = window.menu("Model")
    train = menu.addAction("Train…")
    train.setShortcut(QKeySequence("Ctrl+T"))
    train.setStatusTip("Fine-tune a classifier on your own labelled folder")
    train.triggered.connect(launcher.open_training)
    manage = menu.addAction("Manage models…")
    manage.setStatusTip("Rename, delete or export model bundles")
    manage.triggered.connect(launcher.open_models_manager)
    window._training_launcher = launcher  # keeps a Python reference when the window is not a QObject
    return launcher
