"""Models manager: the shipped models (read-only) and the user's own, with their metrics; rename, delete, export.

Broken bundles are listed with the reason they cannot be used instead of disappearing. Scanning, renaming, deleting
and zipping run in workers; the GUI thread only fills the table.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from xrayviewer.ui.colours import ERROR_TEXT
from xrayviewer.ui.workers import Worker, start_worker

MODEL_JSON = "model.json"


@dataclass
class ModelEntry:
    """One row: a bundle folder, the loaded bundle or the reason it cannot be used, and whether it is ours to edit."""

    path: Path
    bundle: Any = None
    error: str = ""
    read_only: bool = False

    @property
    def name(self) -> str:
        if self.bundle is not None:
            return self.bundle.name
        try:  # a broken bundle may still have a readable name
            return str(json.loads((self.path / MODEL_JSON).read_text(encoding="utf-8")).get("name") or self.path.name)
        except (OSError, ValueError, AttributeError):
            return self.path.name


def model_dirs() -> list[tuple[Path, bool]]:
    """(folder, read_only): the shipped models, then the user's models folder."""
    from xrayviewer.paths import SHIPPED_MODELS_DIR, user_models_dir

    return [(SHIPPED_MODELS_DIR, True), (user_models_dir(), False)]


def scan_models(dirs: list[tuple[Path, bool]]) -> list[ModelEntry]:
    """Every bundle in `dirs`; broken ones carry their error message."""
    from xrayviewer.model.bundle import scan_bundles

    entries = []
    for folder, read_only in dirs:
        for path, bundle, error in scan_bundles(folder):
            reason = "" if error is None else str(error).replace(f"cannot use the model in {path}: ", "")
            entries.append(ModelEntry(Path(path), bundle, reason, read_only))
    return entries


def rename_bundle(path: Path, new_name: str) -> Path:
    """Set `name` in model.json atomically (temp file in the same folder, fsync, replace); the folder keeps its name."""
    new_name = new_name.strip()
    if not new_name:
        raise ValueError("a model needs a name")
    meta_file = Path(path) / MODEL_JSON
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    meta["name"] = new_name
    fd, tmp = tempfile.mkstemp(prefix=f".{MODEL_JSON}.tmp-", dir=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, meta_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(path)


def delete_bundle(path: Path) -> Path:
    """Remove a bundle: first renamed aside (so it vanishes at once and whole), then deleted."""
    path = Path(path)
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.deleted-", dir=path.parent))
    os.rmdir(aside)
    os.rename(path, aside)
    shutil.rmtree(aside, ignore_errors=True)
    return path


def export_zip(path: Path, out: Path) -> Path:
    """Zip the bundle folder (as one top-level folder) to `out`, via a temp file renamed into place."""
    path, out = Path(path), Path(out)
    if out.suffix.lower() != ".zip":
        out = out.with_name(out.name + ".zip")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.tmp-", suffix=".zip", dir=out.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(path.rglob("*")):
                if file.is_file() and not file.name.startswith("."):
                    archive.write(file, Path(path.name) / file.relative_to(path))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _metric(entry: ModelEntry, key: str) -> str:
    if entry.bundle is None:
        return ""
    value = entry.bundle.metrics.get(key)
    if value is None:  # metrics may be nested per split, e.g. {"validation": {...}}
        nested = entry.bundle.metrics.get("validation")
        value = nested.get(key) if isinstance(nested, dict) else None
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


COLUMNS = ("Name", "Where", "Classes", "Created", "Accuracy", "Macro AUC", "Status")


class ModelsManagerDialog(QDialog):
    """Lists the bundles; acts on the selected one. `window` (optional) provides `use_model(path)`."""

    def __init__(self, window: Any = None, parent: QWidget | None = None, dirs: list[tuple[Path, bool]] | None = None):
        super().__init__(parent if parent is not None else (window if isinstance(window, QWidget) else None))
        self.window_ = window
        self.dirs = dirs
        self.setWindowTitle("Models")
        self.resize(980, 420)
        self.entries: list[ModelEntry] = []
        self.worker: Worker | None = None

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        for column in ("Accuracy", "Macro AUC"):
            self.table.horizontalHeaderItem(COLUMNS.index(column)).setToolTip(
                "On the model's own validation split, as recorded in its model.json")
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COLUMNS.index("Status"), QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.rename_button = QPushButton("Rename…")
        self.delete_button = QPushButton("Delete…")
        self.export_button = QPushButton("Export as zip…")
        self.use_button = QPushButton("Use in viewer")
        self.refresh_button = QPushButton("Refresh")
        close = QPushButton("Close")
        self.rename_button.clicked.connect(self.rename_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        self.export_button.clicked.connect(self.export_selected)
        self.use_button.clicked.connect(self.use_selected)
        self.refresh_button.clicked.connect(self.refresh)
        close.clicked.connect(self.close)
        self.use_button.setVisible(hasattr(window, "use_model"))
        buttons = QHBoxLayout()
        for b in (self.rename_button, self.delete_button, self.export_button, self.use_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.refresh_button)
        buttons.addWidget(close)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Shipped models are read-only; your own models live in your models folder."))
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self._update_buttons()
        self.refresh()

    # listing ---------------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.status.setText("Looking for models…")
        self._run(scan_models, self.dirs or model_dirs(), on_done=self._on_scanned)

    def _run(self, fn, *args, on_done) -> None:
        """One operation at a time; each ends in `on_done` (a bound method) or `_on_error`."""
        self.worker = Worker(fn, *args)
        self.worker.signals.returned.connect(on_done)
        self.worker.signals.errored.connect(self._on_error)
        self.worker.signals.finished.connect(self._update_buttons)
        start_worker(self.worker)
        self._update_buttons()

    def busy(self) -> bool:
        return self.worker is not None and not self.worker.done.is_set()

    def _on_scanned(self, entries: list[ModelEntry]) -> None:
        selected = self.selected()
        self.entries = entries
        self.table.setRowCount(len(entries))
        broken = QBrush(QColor(ERROR_TEXT))
        for row, entry in enumerate(entries):
            bundle = entry.bundle
            cells = (entry.name,
                     "shipped (read-only)" if entry.read_only else "yours",
                     ", ".join(bundle.classes) if bundle is not None else "",
                     str(bundle.meta.get("created", ""))[:19].replace("T", " ") if bundle is not None else "",
                     _metric(entry, "accuracy"), _metric(entry, "macro_auc"),
                     f"cannot be used: {entry.error}" if entry.error else "usable")
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"{entry.path}\n{entry.error}" if entry.error else str(entry.path))
                if entry.error:
                    item.setForeground(broken)
                self.table.setItem(row, col, item)
        n_broken = sum(1 for e in entries if e.error)
        self.status.setText(f"{len(entries)} model(s)" + (f", {n_broken} cannot be used (see Status)." if n_broken
                                                          else "."))
        if selected is not None:
            self.select_path(selected.path)
        self._update_buttons()

    def select_path(self, path: Path) -> bool:
        for row, entry in enumerate(self.entries):
            if entry.path == Path(path):
                self.table.selectRow(row)
                return True
        return False

    def selected(self) -> ModelEntry | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows or rows[0].row() >= len(self.entries):
            return None
        return self.entries[rows[0].row()]

    def _on_selection(self) -> None:
        """The selected model's folder, and for a broken one the whole reason, below the table."""
        entry = self.selected()
        if entry is not None:
            self.status.setText(f"{entry.path}" + (f"\nCannot be used: {entry.error}" if entry.error else ""))
        self._update_buttons()

    def _update_buttons(self, *_: Any) -> None:
        entry, busy = self.selected(), self.busy()
        editable = entry is not None and not entry.read_only and not busy
        self.rename_button.setEnabled(editable and entry.bundle is not None)
        self.delete_button.setEnabled(editable)
        self.export_button.setEnabled(entry is not None and not busy)
        self.use_button.setEnabled(entry is not None and entry.bundle is not None and not busy)
        self.refresh_button.setEnabled(not busy)

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(f"Failed: {exc}")

    # actions ---------------------------------------------------------------------------------------------------
    def rename_selected(self) -> None:
        entry = self.selected()
        if entry is None or entry.read_only or self.busy():
            return
        name, ok = QInputDialog.getText(self, "Rename model", "New name:", text=entry.name)
        if ok and name.strip() and name.strip() != entry.name:
            self._run(rename_bundle, entry.path, name.strip(), on_done=self._on_changed)

    def delete_selected(self) -> None:
        entry = self.selected()
        if entry is None or entry.read_only or self.busy():
            return
        service = getattr(self.window_, "model_service", None)
        active = getattr(service, "bundle_path", None)
        in_use = ("\n\nThe viewer is using this model: it stays loaded until you choose another one."
                  if active and Path(active).resolve() == entry.path.resolve() else "")
        answer = QMessageBox.question(self, "Delete model",
                                      f"Delete the model “{entry.name}” and its folder?\n{entry.path}\n\n"
                                      f"This cannot be undone.{in_use}",
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        if answer == QMessageBox.StandardButton.Yes:
            self._run(delete_bundle, entry.path, on_done=self._on_changed)

    def export_selected(self) -> None:
        entry = self.selected()
        if entry is None or self.busy():
            return
        out, _filter = QFileDialog.getSaveFileName(self, "Export model as zip",
                                                   str(Path.home() / f"{entry.path.name}.zip"),
                                                   "Zip archives (*.zip)")
        if out:
            self._run(export_zip, entry.path, Path(out), on_done=self._on_exported)

    def use_selected(self) -> None:
        entry = self.selected()
        if entry is not None and entry.bundle is not None and hasattr(self.window_, "use_model"):
            self.window_.use_model(entry.path)

    def _on_changed(self, _path: Path) -> None:
        self.refresh()

    def _on_exported(self, out: Path) -> None:
        self.status.setText(f"Exported to {out}")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override; a running scan's result is simply dropped
        if self.worker is not None:
            self.worker.cancel()
        super().closeEvent(event)
