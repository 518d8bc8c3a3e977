"""The main window: a coordinator that wires small widgets (folder panel, viewer, prediction panel, controls) to the
image session and the model service. It holds no image logic of its own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (QComboBox, QFileDialog, QLabel, QMainWindow, QMenu, QScrollArea, QSplitter, QToolBar,
                               QVBoxLayout, QWidget)

from xrayviewer import APP_NAME, DISCLAIMER
from xrayviewer.imaging.display import colormap_table
from xrayviewer.paths import SHIPPED_MODELS_DIR, user_models_dir
from xrayviewer.results import ResultRow
from xrayviewer.ui import dialogs
from xrayviewer.ui.controls import DisplayControls, HeatmapControls
from xrayviewer.ui.folder_panel import FolderPanel
from xrayviewer.ui.image_view import COLORMAPS, ViewerPane
from xrayviewer.ui.folder_loader import FolderLoader
from xrayviewer.ui.jobs import METHODS, Explained, LoadedImage, ground_truth_for
from xrayviewer.ui.model_service import ModelService
from xrayviewer.ui.prediction_panel import PredictionPanel
from xrayviewer.ui.session import PRIORITY_BACKGROUND, ImageSession
from xrayviewer.ui.settings import app_settings, read_bool, read_float
from xrayviewer.ui.shortcuts import SHORTCUTS
from xrayviewer.ui.workers import Worker, start_worker

MAX_RECENT = 8
MENU_NAMES = ("File", "View", "Model", "Tools", "Help")


def _show_choice(group: QActionGroup, box: QComboBox, value: str) -> None:
    """Show `value` as chosen in the menu's action group and in the combo box, without either re-emitting."""
    for act in group.actions():
        act.setChecked(act.data() == value)
    box.blockSignals(True)
    box.setCurrentIndex(box.findData(value))
    box.blockSignals(False)


def _version_label(version: object) -> str:
    """"1" -> "v1", so a bare number after the model's name reads as its version."""
    text = str(version or "")
    return f"v{text}" if text and not text.lower().startswith("v") else text


class MainWindow(QMainWindow):
    """XRayViewer's window. Extensions (results table, training dialog) use only this API — keep it stable:

    - `menu(name) -> QMenu` for "File", "View", "Model", "Tools", "Help"; `toolbar` (QToolBar).
    - `model_service` (ModelService): `.classifier` (None until loaded), `.bundle_path`, `.segmenter`,
      signal `modelChanged(classifier)`; `use_model(path)` loads a bundle in the background and switches to it.
    - `current_path() -> Path | None`, `current_analysis()` (the classifier's Analysis of the image on screen, or
      None), `current_explained()` (everything on screen: analysis, method, class_index, heatmap, lung mask and
      attention, model_key — or None), `folder_paths() -> list[Path]` (every file of the open folder, in order).
    - `model_service.model_key` names the model a result came from (it changes with every load).
    - `open_path(path, select=None)` opens a folder (or one file); `select_path(path)` shows a file of the list.
    - `set_badge(path, ResultRow)` puts a prediction (or an error) on a file's thumbnail.
    Signals: `displayComplete(path)` when an image's prediction and heatmap are on screen, `folderScanned(count)`,
    `imageFailed(path, message)`.
    """

    displayComplete = Signal(str)
    folderScanned = Signal(int)
    imageFailed = Signal(str, str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(APP_NAME)
        self.setAcceptDrops(True)
        self.settings = app_settings()
        self.io_pool = QThreadPool(self)
        self.io_pool.setMaxThreadCount(2)
        self.io_pool.setExpiryTimeout(-1)       # long-lived threads: each keeps one Python thread state
        self.model_pool = QThreadPool(self)     # TensorFlow work: one at a time (the classifier holds a lock anyway)
        self.model_pool.setMaxThreadCount(1)
        self.model_pool.setExpiryTimeout(-1)
        self.model_service = ModelService(self.model_pool, self)
        self.session = ImageSession(self.model_service, self.io_pool, self.model_pool, self)
        self.loader = FolderLoader(self.io_pool, self)
        self._folder: Path | None = None
        self._pending_select: str | None = None

        self._build_widgets()
        self._build_actions()
        self._build_menus()
        self._build_toolbar()
        self._build_statusbar()
        self._connect()
        self._restore_settings()
        # the colormap tables come from matplotlib (a 0.3 s import): import it in a worker, not at the first heatmap
        start_worker(Worker(colormap_table, self.viewer.colormap), self.io_pool, PRIORITY_BACKGROUND)
        from xrayviewer.ui.extensions import install_extensions

        self.extensions = install_extensions(self)
        tools = self._menus["Tools"]
        tools.menuAction().setVisible(not tools.isEmpty())   # an empty menu would only puzzle

    # ------------------------------------------------------------------------------------------------ public API
    def menu(self, name: str) -> QMenu:
        return self._menus[name]

    def current_path(self) -> Path | None:
        path = self.folder_panel.current_path()
        return Path(path) if path else None

    def current_analysis(self) -> Any:
        explained = self.session.current_explained
        return explained.analysis if explained is not None else None

    def current_explained(self) -> Explained | None:
        return self.session.current_explained

    def folder_paths(self) -> list[Path]:
        return [Path(p) for p in self.folder_panel.all_paths()]

    def open_path(self, path: str | Path, select: str | Path | None = None) -> None:
        """Open a folder (all radiographs under it) or a single file."""
        path = Path(path).expanduser()
        self._pending_select = os.path.realpath(Path(select).expanduser()) if select else None
        if path.is_dir():
            self._open_folder(path.resolve())
        elif path.exists():
            self.open_files([path])
        else:
            self.statusBar().showMessage(f"{path} does not exist", 8000)
            self.folderScanned.emit(0)

    def open_files(self, paths: list[str | Path]) -> None:
        files = [str(Path(p).resolve()) for p in paths]
        self._start_folder(Path(files[0]).parent if files else None,
                           f"{len(files)} file{'s' if len(files) != 1 else ''}")
        if not self._pending_select and files:
            self._pending_select = os.path.realpath(files[0])
        self.loader.add(files)

    def select_path(self, path: str | Path) -> bool:
        """Show this file if it is in the list (as given, or the same file by its real path)."""
        path = Path(path).expanduser()
        if self.folder_panel.select_path(str(path.absolute())):
            return True
        real = os.path.realpath(path)
        match = next((p for p in self.folder_panel.all_paths() if os.path.realpath(p) == real), None)
        return match is not None and self.folder_panel.select_path(match)

    def set_badge(self, path: str | Path, row: ResultRow) -> None:
        if row.path != str(path):
            row = ResultRow(**{**vars(row), "path": str(path)})
        self.folder_panel.model.set_row(row)

    def use_model(self, path: str | Path) -> None:
        self.settings.setValue("model/path", str(path))
        self.model_service.load(path)

    # ------------------------------------------------------------------------------------------------ building
    def _build_widgets(self) -> None:
        self.folder_panel = FolderPanel()
        self.viewer = ViewerPane()
        self.prediction = PredictionPanel()
        self.heatmap_controls = HeatmapControls()
        self.display_controls = DisplayControls()
        side = QWidget()
        side.setObjectName("sidePanel")
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.setSpacing(2)
        side_layout.addWidget(self.prediction)
        for title, widget in (("Heatmap", self.heatmap_controls), ("Display", self.display_controls)):
            label = QLabel(title)
            label.setObjectName("sectionTitle")
            label.setContentsMargins(10, 6, 10, 0)
            side_layout.addWidget(label)
            side_layout.addWidget(widget)
        side_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setObjectName("sideScroll")
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(side)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(self.folder_panel)
        self.splitter.addWidget(self.viewer)
        self.splitter.addWidget(scroll)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setStretchFactor(2, 0)
        self.splitter.setSizes([250, 850, 300])
        self.splitter.setCollapsible(1, False)
        self.setCentralWidget(self.splitter)

    def _build_actions(self) -> None:
        self.actions_by_id: dict[str, QAction] = {}
        handlers = {
            "open_folder": self._ask_folder, "open_file": self._ask_files, "quit": self.close,
            "next": lambda: self.folder_panel.step(1), "previous": lambda: self.folder_panel.step(-1),
            "first": self.folder_panel.first, "last": self.folder_panel.last,
            "fit": self.viewer.fit, "actual_size": self.viewer.actual_size,
            "zoom_in": lambda: self.viewer.zoom_by(1.25), "zoom_out": lambda: self.viewer.zoom_by(0.8),
            "invert": self.viewer.toggle_invert, "reset": self.viewer.reset,
            "rotate_right": lambda: self.viewer.rotate(90), "rotate_left": lambda: self.viewer.rotate(-90),
            "flip_h": lambda: self.viewer.flip(True), "flip_v": lambda: self.viewer.flip(False),
            "overlay": None, "heatmap": None, "lung_outline": None, "lungs_only": None,
            "opacity_up": lambda: self._nudge_opacity(0.1), "opacity_down": lambda: self._nudge_opacity(-0.1),
            "shortcuts": lambda: dialogs.shortcuts_dialog(self).exec(),
        }
        for action_id, (text, keys, _group) in SHORTCUTS.items():
            action = QAction(text, self)
            action.setObjectName(f"action_{action_id}")
            action.setShortcuts([QKeySequence(k) for k in keys])
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            handler = handlers[action_id]
            if handler is None:
                action.setCheckable(True)
            else:
                action.triggered.connect(handler)
            self.addAction(action)   # shortcuts work even when the menu bar is hidden
            self.actions_by_id[action_id] = action
        a = self.actions_by_id
        a["heatmap"].setChecked(True)
        a["overlay"].toggled.connect(self._set_overlay)
        a["heatmap"].toggled.connect(self.viewer.set_show_heatmap)
        a["lung_outline"].toggled.connect(self._set_outline)
        a["lungs_only"].toggled.connect(self._set_lungs_only)
        for key, short in (("open_folder", "Open folder"), ("open_file", "Open file"), ("previous", "◀ Previous"),
                           ("next", "Next ▶"), ("fit", "Fit"), ("actual_size", "1:1"), ("rotate_right", "Rotate"),
                           ("invert", "Invert"), ("overlay", "Overlay"), ("heatmap", "Heatmap"), ("reset", "Reset")):
            a[key].setIconText(short)
        for action in a.values():
            keys = " / ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in action.shortcuts())
            action.setToolTip(f"{action.text().replace('&', '')}  ({keys})" if keys else action.text())

    def _build_menus(self) -> None:
        bar = self.menuBar()
        self._menus = {name: bar.addMenu(f"&{name}") for name in MENU_NAMES}
        a = self.actions_by_id
        file_menu = self._menus["File"]
        file_menu.addAction(a["open_folder"])
        file_menu.addAction(a["open_file"])
        self.recent_menu = file_menu.addMenu("Recent &folders")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addSeparator()
        file_menu.addAction(a["quit"])

        view = self._menus["View"]
        for key in ("next", "previous", "first", "last"):
            view.addAction(a[key])
        view.addSeparator()
        for key in ("fit", "actual_size", "zoom_in", "zoom_out", "rotate_right", "rotate_left", "flip_h", "flip_v",
                    "invert", "reset"):
            view.addAction(a[key])
        view.addSeparator()
        for key in ("heatmap", "overlay", "opacity_up", "opacity_down", "lung_outline", "lungs_only"):
            view.addAction(a[key])
        self.method_menu = view.addMenu("Explanation &method")
        self.method_group = QActionGroup(self)
        for key, text in METHODS.items():
            act = self.method_menu.addAction(text)
            act.setCheckable(True)
            act.setData(key)
            act.setChecked(key == "gradcam")
            self.method_group.addAction(act)
        self.method_group.triggered.connect(lambda act: self._set_method(act.data()))
        self.colormap_menu = view.addMenu("&Colours")
        self.colormap_group = QActionGroup(self)
        for name in COLORMAPS:
            act = self.colormap_menu.addAction(name.capitalize())
            act.setCheckable(True)
            act.setData(name)
            self.colormap_group.addAction(act)
        self.colormap_group.triggered.connect(lambda act: self._set_colormap(act.data()))

        model = self._menus["Model"]
        self.models_menu = model.addMenu("&Use model")
        self.models_menu.aboutToShow.connect(self._fill_models_menu)
        load = model.addAction("&Load bundle…")
        load.triggered.connect(self._ask_bundle)
        card = model.addAction("Model &card")
        card.triggered.connect(self.show_model_card)


        help_menu = self._menus["Help"]
        help_menu.addAction(a["shortcuts"])
        help_menu.addAction("&Disclaimer").triggered.connect(lambda: dialogs.disclaimer_dialog(self).exec())
        help_menu.addAction(f"&About {APP_NAME}").triggered.connect(lambda: dialogs.about_dialog(self).exec())

    def _build_toolbar(self) -> None:
        self.toolbar = QToolBar("Main")
        self.toolbar.setObjectName("mainToolbar")
        self.toolbar.setMovable(False)
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        a = self.actions_by_id
        for key in ("open_folder", "open_file", None, "previous", "next", None, "fit", "actual_size",
                    "rotate_right", "invert", "reset", None, "heatmap", "overlay"):
            if key is None:
                self.toolbar.addSeparator()
            else:
                self.toolbar.addAction(a[key])
        self.toolbar.addSeparator()
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.toolbar)

    def _build_statusbar(self) -> None:
        bar = self.statusBar()
        self.progress_label = QLabel("")
        self.progress_label.setObjectName("statusProgress")
        self.model_label = QLabel("No model")
        self.model_label.setObjectName("statusModel")
        disclaimer = QLabel(DISCLAIMER)
        disclaimer.setObjectName("statusDisclaimer")
        self.pixel_label = QLabel("")
        self.pixel_label.setObjectName("statusPixel")
        bar.addWidget(self.pixel_label)      # hidden while a status message shows
        bar.addPermanentWidget(self.progress_label)
        bar.addPermanentWidget(self.model_label)
        bar.addPermanentWidget(disclaimer)

    def _connect(self) -> None:
        fp, s, ms = self.folder_panel, self.session, self.model_service
        fp.currentPathChanged.connect(self._on_current_path)
        self.loader.pathsFound.connect(self._on_scan_chunk)
        self.loader.thumbnailReady.connect(self._on_thumbnail)
        self.loader.scanFinished.connect(self._on_scan_done)
        self.loader.scanFailed.connect(self._on_scan_failed)
        s.imageReady.connect(self._on_image_ready)
        s.imageFailed.connect(self._on_image_failed)
        s.explainPending.connect(self._on_explain_pending)
        s.explained.connect(self._on_explained)
        s.explainFailed.connect(self._on_explain_failed)
        s.rowReady.connect(self.folder_panel.model.set_row)
        s.rowReady.connect(self._update_progress)
        s.backgroundFinished.connect(self._update_progress)
        s.backgroundFinished.connect(self.folder_panel.refresh_order)
        ms.loadStarted.connect(self._on_model_loading)
        ms.modelChanged.connect(self._on_model_changed)
        ms.loadFailed.connect(self._on_model_failed)
        hc, dc, v = self.heatmap_controls, self.display_controls, self.viewer
        hc.methodChanged.connect(self._set_method)
        hc.classChanged.connect(self._set_class)
        hc.colormapChanged.connect(self._set_colormap)
        hc.opacityChanged.connect(v.set_opacity)
        hc.overlayToggled.connect(self.actions_by_id["overlay"].setChecked)
        hc.outlineToggled.connect(self.actions_by_id["lung_outline"].setChecked)
        hc.lungsOnlyToggled.connect(self.actions_by_id["lungs_only"].setChecked)
        dc.windowChanged.connect(lambda c, w: v.set_window(c, w))
        dc.invertToggled.connect(v.toggle_invert)
        dc.resetRequested.connect(v.reset)
        v.stateChanged.connect(self._on_view_state)
        v.pixelInfo.connect(self.pixel_label.setText)
        self.prediction.classClicked.connect(self._set_class)
        self.prediction.modelCardRequested.connect(self.show_model_card)

    # ------------------------------------------------------------------------------------------------ folders
    def _ask_folder(self) -> None:
        start = str(self.settings.value("last_folder", "") or Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of radiographs", start)
        if folder:
            self.open_path(folder)

    def _ask_files(self) -> None:
        start = str(self.settings.value("last_folder", "") or Path.home())
        files, _ = QFileDialog.getOpenFileNames(
            self, "Open radiographs", start,
            "Radiographs (*.png *.jpg *.jpeg *.bmp *.tif *.tiff *.dcm *.dicom);;All files (*)")
        if files:
            self.open_files(files)

    def _open_folder(self, folder: Path) -> None:
        self._start_folder(folder, folder.name or str(folder))
        self._remember_folder(folder)
        self.loader.scan(str(folder))
        self.statusBar().showMessage(f"Scanning {folder}…")

    def _start_folder(self, folder: Path | None, title: str) -> None:
        self.loader.stop()
        self.session.stop_background()
        self.session.select(None)
        self._folder = folder
        self.folder_panel.set_folder(title)
        self.viewer.clear()
        self.prediction.clear_result("No image")
        self.prediction.show_image_facts(None)
        self.setWindowTitle(f"{title} — {APP_NAME}")

    def _on_scan_chunk(self, paths: list[str]) -> None:
        classes = self._classes()
        truths = {p: ground_truth_for(p, classes) for p in paths}
        self.folder_panel.model.add_paths(paths, truths)
        if self.model_service.classifier is not None:
            self.session.queue_background(paths)
        if self.folder_panel.current_path() is None:
            target = self._pending_select
            if target is None:
                self.folder_panel.select_path(paths[0])
            else:
                match = next((p for p in paths if os.path.realpath(p) == target), None)
                if match is not None:
                    self.folder_panel.select_path(match)
                    self._pending_select = None

    def _on_scan_done(self, count: int) -> None:
        if self._pending_select:
            missing = self._pending_select
            self._pending_select = None
            self.statusBar().showMessage(f"{missing} is not among the radiographs of this folder", 10000)
            self.imageFailed.emit(missing, "the file to select is not among the radiographs found")
        elif count == 0:
            self.viewer.left.show_message("No radiographs found in this folder", "error")
        self.statusBar().showMessage(f"{count} radiograph{'s' if count != 1 else ''}", 5000)
        self._update_progress()
        self.folderScanned.emit(count)

    def _on_scan_failed(self, message: str) -> None:
        self.statusBar().showMessage(f"Could not read the folder: {message}", 10000)
        self.viewer.left.show_message(f"Could not read the folder: {message}", "error")
        self.folderScanned.emit(0)

    def _on_thumbnail(self, item: tuple) -> None:
        path, pixels, error = item
        self.folder_panel.model.set_thumbnail(path, pixels, error)

    def _remember_folder(self, folder: Path) -> None:
        self.settings.setValue("last_folder", str(folder))
        recent = [str(folder)] + [f for f in self._recent_folders() if f != str(folder)]
        self.settings.setValue("recent_folders", recent[:MAX_RECENT])

    def _recent_folders(self) -> list[str]:
        value = self.settings.value("recent_folders", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self._recent_folders()
        if not recent:
            self.recent_menu.addAction("(none yet)").setEnabled(False)
        for folder in recent:
            act = self.recent_menu.addAction(folder)
            act.setEnabled(Path(folder).is_dir())
            act.triggered.connect(lambda _=False, f=folder: self.open_path(f))

    # ------------------------------------------------------------------------------------------------ the image
    def _on_current_path(self, path: str) -> None:
        # reset first: a cached image is shown synchronously inside session.select()
        self.viewer.show_explained(None)
        self.prediction.clear_result("…")
        self.prediction.show_image_facts(None, path)
        self.prediction.set_busy("Reading the image…")
        self.session.select(path, self.folder_panel.neighbours())

    def _on_image_ready(self, image: LoadedImage) -> None:
        self.viewer.show_image(image)
        self.prediction.show_image_facts(image, image.path)

    def _on_image_failed(self, path: str, message: str) -> None:
        self.viewer.show_error(f"Cannot read this file:\n{message}", on_image=True)
        self.prediction.clear_result("Unreadable file")
        self.prediction.set_error(message, "Cannot read this file")
        self.imageFailed.emit(path, message)

    def _on_explain_pending(self, text: str) -> None:
        self.prediction.set_busy(text)
        self.viewer.show_pending(text)

    def _on_explained(self, explained: Explained) -> None:
        self.viewer.show_explained(explained)
        self.prediction.show_result(explained)
        self.heatmap_controls.set_target(self.session.class_index)
        QTimer.singleShot(0, lambda p=explained.path: self._emit_display_complete(p))

    def _emit_display_complete(self, path: str) -> None:
        ex = self.session.current_explained
        if ex is not None and ex.path == path:
            self.displayComplete.emit(path)

    def _on_explain_failed(self, path: str, message: str) -> None:
        self.prediction.set_error(message)
        self.viewer.show_error(f"Could not compute the prediction:\n{message}")
        self.imageFailed.emit(path, message)

    # ------------------------------------------------------------------------------------------------ heatmap options
    def _set_method(self, method: str) -> None:
        _show_choice(self.method_group, self.heatmap_controls.method, method)
        if method != self.session.method:
            self.session.set_method(method)
        self.settings.setValue("view/method", method)
        self.folder_panel.list.setFocus()

    def _set_class(self, class_index: int | None) -> None:
        self.heatmap_controls.set_target(class_index)
        if class_index != self.session.class_index:
            self.session.set_class_index(class_index)
        self.folder_panel.list.setFocus()

    def _set_colormap(self, name: str) -> None:
        self.viewer.set_colormap(name)
        _show_choice(self.colormap_group, self.heatmap_controls.colormap, name)
        self.folder_panel.list.setFocus()

    def _set_overlay(self, on: bool) -> None:
        self.viewer.set_overlay(on)
        self._sync_check(self.heatmap_controls.overlay, on)

    def _set_outline(self, on: bool) -> None:
        self.viewer.set_show_outline(on)
        self._sync_check(self.heatmap_controls.outline, on)

    def _set_lungs_only(self, on: bool) -> None:
        self.viewer.set_lungs_only(on)
        self._sync_check(self.heatmap_controls.lungs_only, on)

    @staticmethod
    def _sync_check(box, on: bool) -> None:
        box.blockSignals(True)
        box.setChecked(on)
        box.blockSignals(False)

    def _nudge_opacity(self, delta: float) -> None:
        self.heatmap_controls.opacity.setValue(round((self.viewer.opacity + delta) * 100))

    def _on_view_state(self) -> None:
        st = self.viewer.state
        self.display_controls.show_state(st.center, st.width, st.invert)

    # ------------------------------------------------------------------------------------------------ models
    def _classes(self) -> list[str]:
        classifier = self.model_service.classifier
        return list(classifier.classes) if classifier is not None else []

    def load_initial_model(self, path: str | Path | None = None) -> bool:
        """--model, else the last model used, else models/default. False when there is none to load."""
        from xrayviewer.paths import DEFAULT_MODEL_DIR

        candidates = [path] if path else [self.settings.value("model/path", ""), DEFAULT_MODEL_DIR]
        for candidate in candidates:
            if candidate and (Path(candidate) / "model.json").is_file():
                self.model_service.load(candidate)
                return True
        if path:
            self._on_model_failed(str(path), f"no model bundle at {path} (model.json is missing)")
        else:
            self.model_label.setText("No model")
            self.prediction.set_model("none", note="Model › Load bundle… to choose one")
        return False

    def _on_model_loading(self, path: str) -> None:
        self.model_label.setText(f"Loading model {Path(path).name}…")
        if self.model_service.classifier is None:
            self.prediction.set_model(f"loading {Path(path).name}…")
        self.statusBar().showMessage("Loading model…")
        if self.session.current_image is not None and self.model_service.classifier is None:
            self._on_explain_pending("Loading model…")

    def _on_model_changed(self, classifier: Any) -> None:
        classes = self._classes()
        self.heatmap_controls.set_classes(classes)
        self.folder_panel.set_classes(classes)
        self.folder_panel.model.set_ground_truth({p: ground_truth_for(p, classes)
                                                  for p in self.folder_panel.all_paths()})
        self.folder_panel.model.clear_rows()
        self.heatmap_controls.set_lungs_available(self.model_service.segmenter is not None)
        bundle = getattr(classifier, "bundle", None)
        name = getattr(bundle, "name", "model")
        version = _version_label(getattr(bundle, "version", ""))
        path = self.model_service.bundle_path
        has_card = bool(path and (Path(path) / "MODEL_CARD.md").is_file())
        self.prediction.set_model(name, version, classes, has_card, self.model_service.note)
        self.model_label.setText(f"Model: {name} {version}")
        self.statusBar().showMessage(f"Model {name} {version} ready", 5000)
        if classifier is not None:
            self.session.queue_background(self.folder_panel.all_paths())
        self._update_progress()

    def _on_model_failed(self, path: str, message: str) -> None:
        self.model_label.setText("No model")
        self.statusBar().showMessage(f"Could not load the model: {message}", 15000)
        self.prediction.set_error(message, f"Could not load the model {Path(path).name}")
        self.viewer.right.show_message(f"Could not load the model:\n{message}", "error")

    def _fill_models_menu(self) -> None:
        from xrayviewer.model.bundle import list_bundles

        self.models_menu.clear()
        group = QActionGroup(self.models_menu)
        current = Path(self.model_service.bundle_path).resolve() if self.model_service.bundle_path else None
        bundles = list_bundles(SHIPPED_MODELS_DIR, user_models_dir())
        if not bundles:
            self.models_menu.addAction("(no models found)").setEnabled(False)
        for bundle in bundles:
            where = "shipped" if Path(bundle.path).parent == SHIPPED_MODELS_DIR.resolve() else "yours"
            label = f"{bundle.name} {_version_label(bundle.version)}  ({where}: {Path(bundle.path).name})"
            act = self.models_menu.addAction(label)
            act.setCheckable(True)
            act.setChecked(current is not None and Path(bundle.path).resolve() == current)
            group.addAction(act)
            act.triggered.connect(lambda _=False, p=str(bundle.path): self.use_model(p))

    def _ask_bundle(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model bundle folder (holding model.json)",
                                                  str(user_models_dir()))
        if folder:
            self.use_model(folder)

    def show_model_card(self) -> None:
        dialog = dialogs.model_card_dialog(self.model_service.bundle_path, self)
        if dialog is not None:
            dialog.show()

    def _update_progress(self, *_: Any) -> None:
        items = self.folder_panel.model.items
        done = sum(1 for it in items if it.row is not None)
        if self.session.background_remaining and done < len(items):
            self.progress_label.setText(f"Classifying folder: {done}/{len(items)}")
        else:
            self.progress_label.setText("")

    # ------------------------------------------------------------------------------------------------ drag and drop
    def dragEnterEvent(self, event):  # noqa: N802
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event):  # noqa: N802
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        folders = [p for p in paths if p.is_dir()]
        if folders:
            self.open_path(folders[0])
        elif paths:
            self.open_files(paths)
        event.acceptProposedAction()

    # ------------------------------------------------------------------------------------------------ settings
    def _restore_settings(self) -> None:
        s = self.settings
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1400, 880)
        sizes = s.value("window/splitter")
        if sizes:
            try:
                self.splitter.setSizes([int(x) for x in sizes])
            except (TypeError, ValueError):
                pass
        opacity = read_float(s, "view/opacity", 0.45)
        self.heatmap_controls.opacity.setValue(round(opacity * 100))
        self.viewer.set_opacity(opacity)
        colormap = str(s.value("view/colormap", "jet"))
        self._set_colormap(colormap if colormap in COLORMAPS else "jet")
        method = str(s.value("view/method", "gradcam"))
        self._set_method(method if method in METHODS else "gradcam")
        self.actions_by_id["overlay"].setChecked(read_bool(s, "view/overlay", False))
        self.actions_by_id["heatmap"].setChecked(read_bool(s, "view/heatmap", True))
        self.actions_by_id["lung_outline"].setChecked(read_bool(s, "view/lung_outline", True))
        self.actions_by_id["lungs_only"].setChecked(read_bool(s, "view/lungs_only", False))

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/splitter", [int(x) for x in self.splitter.sizes()])
        s.setValue("view/opacity", self.viewer.opacity)
        s.setValue("view/colormap", self.viewer.colormap)
        s.setValue("view/method", self.session.method)
        s.setValue("view/overlay", self.viewer.overlay)
        s.setValue("view/heatmap", self.viewer.show_heatmap)
        s.setValue("view/lung_outline", self.viewer.show_outline)
        s.setValue("view/lungs_only", self.viewer.lungs_only)
        s.sync()

    def shutdown(self, save_settings: bool = True) -> None:
        """Stop background work (cooperatively; waits a little for the running steps) and remember the settings."""
        from xrayviewer.ui.workers import cancel_all_and_wait

        if save_settings:
            self.save_settings()
        self.loader.stop()
        self.session.shutdown()
        self.model_service.cancel()
        cancel_all_and_wait(3000)

    def closeEvent(self, event):  # noqa: N802
        self.shutdown()
        super().closeEvent(event)
