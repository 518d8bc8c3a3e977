"""Classify folder, the results table, its filters and summary, and the exports — on a small stand-in window with a
fast fake classifier (always runs), on real radiographs from ../shared, and on the real MainWindow once it exists."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QMainWindow, QMenu, QToolBar

from xrayviewer.imaging.preprocess import PREPROCESSING_ID
from xrayviewer.model.classifier import Analysis
from xrayviewer.reports.heatmap_export import read_heatmap_png16
from xrayviewer.results import read_results_csv, write_results_csv
from xrayviewer.ui.results_view import ResultsController, install
from xrayviewer.ui.workers import cancel_all_and_wait

CLASSES = ["covid", "normal", "pneumonia"]
CENTERS = np.array([1 / 6, 1 / 2, 5 / 6])   # fake model: mean brightness decides the class


class FakeClassifier:
    """Implements what batch.classify_paths and the exports call, without TensorFlow. The class follows the image's
    mean brightness; near a boundary the prediction has low confidence. `gate` can hold the 2nd batch (cancel test)."""

    def __init__(self, classes=CLASSES):
        self.classes = list(classes)
        self.bundle = SimpleNamespace(name="fake-model", meta={"version": "0.0"}, path="", classes=self.classes,
                                      ood={"threshold": 2.0}, preprocessing=PREPROCESSING_ID)
        self.calls = 0
        self.gate: threading.Event | None = None
        self.gate_reached = threading.Event()

    def model_input(self, radiograph):
        return np.full((4, 4, 3), float(radiograph.pixels.mean()), np.float32)

    def analyze_inputs(self, images, shapes, *, cams=True):
        self.calls += 1
        if self.gate is not None and self.calls == 2:
            self.gate_reached.set()
            self.gate.wait(10)
        out = []
        for x, shape in zip(images, shapes):
            mean = float(x.mean())
            logits = -40.0 * (mean - CENTERS) ** 2
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            maps = np.zeros((len(self.classes), 7, 7), np.float32)
            maps[:, 2:5, 1:3] = 1.0
            out.append(Analysis(self.classes, probs.astype(np.float32), logits.astype(np.float32),
                                maps if cams else None, np.zeros(4, np.float32), tuple(shape), mean * 3, mean > 0.8))
        return out

    def analyze(self, radiograph):
        return self.analyze_inputs(self.model_input(radiograph)[None], [radiograph.shape])[0]

    def explain(self, radiograph, method="gradcam", class_index=None):
        from xrayviewer.model.explain import Explanation, upsample_cam

        analysis = self.analyze(radiograph)
        index = analysis.predicted_index if class_index is None else int(class_index)
        raw = analysis.cams[index][::-1].copy()  # differs from Grad-CAM, so a test can tell which was exported
        return Explanation(raw, upsample_cam(raw, radiograph.shape), index, method)


class FakeModelService(QObject):
    modelChanged = Signal(object)

    def __init__(self, classifier=None):
        super().__init__()
        self.classifier = classifier
        self.segmenter = None
        self.bundle_path = None


class FakeWindow(QMainWindow):
    """The slice of MainWindow's API (docs/ARCHITECTURE.md) that results_view uses."""

    def __init__(self, classifier=None):
        super().__init__()
        self._menus = {name: self.menuBar().addMenu(name) for name in ("File", "View", "Model", "Tools", "Help")}
        self.toolbar = QToolBar("Main")
        self.addToolBar(self.toolbar)
        self.model_service = FakeModelService(classifier)
        self.paths: list[Path] = []
        self.current: Path | None = None
        self.analysis = None
        self.badges: dict[Path, object] = {}
        self.selected: list[Path] = []
        self.opened: list[Path] = []

    def menu(self, name: str) -> QMenu:
        return self._menus[name]

    def folder_paths(self):
        return list(self.paths)

    def current_path(self):
        return self.current

    def current_analysis(self):
        return self.analysis

    def open_path(self, path):
        self.opened.append(Path(path))

    def select_path(self, path):
        if Path(path) not in self.paths:
            return False
        self.selected.append(Path(path))
        return True

    def set_badge(self, path, row):
        self.badges[Path(path)] = row


def _write_png(path: Path, value: float, shape=(60, 50)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full(shape, int(round(value * 255)), np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


@pytest.fixture
def synthetic_folder(tmp_path) -> list[Path]:
    """Class folders with images the fake model gets right, one it gets wrong, one it is unsure of, one broken."""
    root = tmp_path / "dataset"
    paths = []
    for label, value in (("covid", 1 / 6), ("normal", 1 / 2), ("pneumonia", 5 / 6)):
        for i in range(3):
            paths.append(_write_png(root / label / f"{label}_{i}.png", value))
    paths.append(_write_png(root / "covid" / "covid_looks_normal.png", 0.5))          # mismatch
    paths.append(_write_png(root / "normal" / "normal_unsure.png", 0.66))            # low confidence, still normal
    broken = root / "pneumonia" / "pneumonia_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)                          # truncated
    paths.append(broken)
    return sorted(paths)


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("XRAYVIEWER_SETTINGS_DIR", str(tmp_path / "settings"))  # the threshold setting stays here
    win = FakeWindow(FakeClassifier())
    qtbot.addWidget(win)
    yield win
    # the stand-in has no shutdown: a worker still running (an export that already reported) must not run on into
    # the next test
    cancel_all_and_wait()


@pytest.fixture
def controller(window) -> ResultsController:
    return install(window)


def _run(qtbot, controller, timeout=60_000):
    with qtbot.waitSignal(controller.runFinished, timeout=timeout) as blocker:
        assert controller.classify_folder() is not None
    return blocker.args[0]


def _action_texts(widget) -> list[str]:
    return [a.text() for a in widget.actions()]


def test_install_adds_menu_toolbar_and_export_entries(window, controller):
    assert "Classify folder" in _action_texts(window.menu("Tools"))
    assert "Classify folder" in _action_texts(window.toolbar)
    assert _action_texts(controller.export_menu) == ["Export results CSV…", "Case report…", "Export heatmap…"]
    assert controller.export_menu.menuAction() in window.menu("File").actions()
    assert not controller.export_csv_action.isEnabled()  # nothing to export before a run


def test_classify_folder_fills_table_badges_and_summary(qtbot, window, controller, synthetic_folder):
    window.paths = synthetic_folder
    rows = _run(qtbot, controller)
    model = controller.panel.table_model
    assert [Path(r.path) for r in rows] == synthetic_folder and model.rowCount() == len(synthetic_folder)
    by_name = {Path(r.path).name: r for r in rows}
    assert by_name["covid_0.png"].predicted == "covid" and by_name["covid_0.png"].correct is True
    assert by_name["covid_looks_normal.png"].ground_truth == "covid"
    assert by_name["covid_looks_normal.png"].correct is False
    assert by_name["pneumonia_broken.png"].error and by_name["pneumonia_broken.png"].correct is None
    assert set(window.badges) == set(synthetic_folder)  # every thumbnail got its badge, error rows included
    # the summary: 11 scored, 10 correct
    assert controller.panel.summary.isVisible() or not controller.dock.isVisible()
    text = controller.panel.summary.text()
    assert "Accuracy 90.9 %" in text and "10 of 11" in text and "sensitivity" in text
    assert controller.export_csv_action.isEnabled()
    assert "Classified 12 images (1 could not be read)" in controller.last_message
    # the table shows names, the predicted class, probabilities and correct?
    col = model.column_of("Correct?")
    shown = {model.index(r, 0).data(): model.index(r, col).data() for r in range(model.rowCount())}
    assert shown["covid_looks_normal.png"] == "no" and shown["covid_0.png"] == "yes"


class LeftHalfLungs:
    """Stands in for the LungSegmenter: the left half of every image is 'lung'."""

    def segment(self, radiograph):
        mask = np.zeros(radiograph.shape, bool)
        mask[:, : radiograph.shape[1] // 2] = True
        return mask


def test_lung_attention_comes_from_the_windows_segmenter(qtbot, window, controller, synthetic_folder):
    window.model_service.segmenter = LeftHalfLungs()
    window.paths = synthetic_folder
    rows = _run(qtbot, controller)
    # the fake map is hot in columns 1..2 of a 7-wide grid: mostly inside the left half
    attention = [r.lung_attention for r in rows if not r.error]
    assert all(a is not None and 0.7 < a <= 1.0 for a in attention)
    model = controller.panel.table_model
    col = model.column_of("Lung attention")
    assert model.index(0, col).data().endswith(" %")


def test_filters_mismatch_low_confidence_errors_and_text(qtbot, window, controller, synthetic_folder):
    window.paths = synthetic_folder
    _run(qtbot, controller)
    panel = controller.panel

    def names():
        return sorted(Path(r.path).name for r in panel.visible_rows())

    panel.mismatches.setChecked(True)
    assert names() == ["covid_looks_normal.png"]
    panel.mismatches.setChecked(False)
    panel.threshold.setValue(0.9)
    panel.low_confidence.setChecked(True)
    assert names() == ["normal_unsure.png"]
    panel.low_confidence.setChecked(False)
    panel.errors.setChecked(True)
    assert names() == ["pneumonia_broken.png"]
    panel.mismatches.setChecked(True)  # categories combine with OR
    assert names() == ["covid_looks_normal.png", "pneumonia_broken.png"]
    panel.text_filter.setText("BROKEN")  # text narrows (AND), case-insensitive
    assert names() == ["pneumonia_broken.png"]
    assert panel.shown.text() == f"1 of {len(synthetic_folder)}"
    panel.errors.setChecked(False)
    panel.mismatches.setChecked(False)
    panel.text_filter.setText("")
    assert len(names()) == len(synthetic_folder)
    # the threshold is a setting: the next window starts with it
    second = FakeWindow(FakeClassifier())
    qtbot.addWidget(second)
    assert install(second).panel.threshold.value() == pytest.approx(0.9)


def test_sorting_is_numeric_and_double_click_selects_in_viewer(qtbot, window, controller, synthetic_folder):
    window.paths = synthetic_folder
    _run(qtbot, controller)
    panel = controller.panel
    col = panel.table_model.column_of("p(covid)")
    panel.table.sortByColumn(col, Qt.SortOrder.DescendingOrder)
    values = [r.probabilities.get("covid", -1.0) for r in panel.visible_rows()]
    assert values == sorted(values, reverse=True)
    index = panel.proxy.index(0, 0)
    panel.table.doubleClicked.emit(index)
    assert window.selected == [Path(panel.visible_rows()[0].path)]
    # a path outside the open folder is opened instead of selected
    controller._open_from_table(Path("/elsewhere/x.png"))
    assert window.opened == [Path("/elsewhere/x.png")]


def test_csv_export_round_trips(qtbot, tmp_path, window, controller, synthetic_folder):
    window.paths = synthetic_folder
    rows = _run(qtbot, controller)
    out = tmp_path / "results.csv"
    assert controller.export_csv(out) == len(rows)
    classes, back = read_results_csv(out)
    assert classes == CLASSES and len(back) == len(rows)
    for a, b in zip(rows, back):
        assert (a.path, a.predicted, a.ground_truth, a.correct, a.error, a.ood_flag) == \
               (b.path, b.predicted, b.ground_truth, b.correct, b.error, b.ood_flag)
        assert b.probabilities == pytest.approx(a.probabilities, abs=1e-6)
        assert (b.ood_score is None) == (a.ood_score is None)
    again = tmp_path / "again.csv"
    write_results_csv(back, again, classes)
    assert again.read_bytes() == out.read_bytes()  # the written form is a fixed point


def test_cancel_keeps_the_rows_so_far(qtbot, window, controller, tmp_path):
    paths = [_write_png(tmp_path / "normal" / f"n{i:02d}.png", 0.5) for i in range(20)]
    window.paths = paths
    fake = window.model_service.classifier
    fake.gate = threading.Event()
    with qtbot.waitSignal(controller.runFinished, timeout=30_000) as blocker:
        controller.classify_folder()
        assert fake.gate_reached.wait(20)             # the worker holds the 2nd batch of 8
        qtbot.waitUntil(lambda: controller.panel.table_model.rowCount() == 8, timeout=10_000)
        controller.cancel_run()
        assert not controller.classify_action.isEnabled()  # no second run while one is going
        fake.gate.set()
    rows = blocker.args[0]
    assert 8 <= len(rows) < 20
    assert [Path(r.path) for r in rows] == paths[:len(rows)]
    assert "Cancelled after" in controller.last_message and "rows so far stay" in controller.last_message
    assert controller.classify_action.isEnabled()


def test_clear_messages_without_model_or_folder(qtbot, window, controller, tmp_path):
    assert controller.classify_folder() is None                   # no folder open
    assert "Open a folder" in controller.last_message
    window.model_service.classifier = None
    window.model_service.modelChanged.emit(None)
    assert not controller.classify_action.isEnabled()
    window.paths = [_write_png(tmp_path / "a.png", 0.5)]
    assert controller.classify_folder() is None
    assert "No model is loaded" in controller.last_message
    assert controller.export_csv(tmp_path / "x.csv") is None
    assert "no results" in controller.last_message


def test_case_report_and_heatmap_export_for_current_image(qtbot, window, controller, tmp_path):
    image = _write_png(tmp_path / "covid" / "case.png", 1 / 6, shape=(90, 70))
    window.current = image
    with qtbot.waitSignal(controller.reportWritten, timeout=60_000) as blocker:
        controller.case_report(tmp_path / "case.pdf", tmp_path / "case.png.report.png")
    pdf, png = blocker.args[0]
    assert pdf.read_bytes().startswith(b"%PDF-") and png.stat().st_size > 10_000
    with qtbot.waitSignal(controller.reportWritten, timeout=60_000) as blocker:
        controller.export_heatmap(tmp_path / "heat.png")
    overlay, raw = blocker.args[0]
    assert cv2.imread(str(overlay)).shape == (90, 70, 3)
    heat = read_heatmap_png16(raw)
    assert heat.shape == (90, 70) and heat.max() == pytest.approx(1.0)


def test_export_problems_are_messages_not_tracebacks(qtbot, window, controller, tmp_path):
    controller.case_report(tmp_path / "r.pdf")
    assert "Select an image first" in controller.last_message
    window.current = tmp_path / "missing.png"
    with qtbot.waitSignal(controller.reportWritten, timeout=30_000) as blocker:
        controller.case_report(tmp_path / "r.pdf")
    assert blocker.args[0] == []
    assert controller.last_message.startswith("Could not write the case report:")
    assert "Traceback" not in controller.last_message


# ------------------------------------------------------------------------------------------- real radiographs

def _copy_real_folder(shared_data: Path, cxr_manifest: list[dict], dest: Path, per_class: int = 3) -> list[Path]:
    """A few real images per class, copied (into tmp only) with the dataset's class sub-folders."""
    copied = []
    for label in ("covid", "normal", "pneumonia", "other"):
        rows = [r for r in cxr_manifest if r["label"] == label][:per_class]
        for r in rows:
            target = dest / r["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared_data / "cxr" / r["path"], target)
            copied.append(target)
    return sorted(copied)


def test_table_fills_from_a_real_folder(qtbot, window, controller, tmp_path, shared_data, cxr_manifest):
    window.paths = _copy_real_folder(shared_data, cxr_manifest, tmp_path / "real")
    rows = _run(qtbot, controller)
    assert len(rows) == len(window.paths)
    assert not [r.error for r in rows if r.error]  # every real image decodes
    for r in rows:
        folder = Path(r.path).parent.name
        # "other" is not a class of the model: the folder gives no ground truth there
        assert r.ground_truth == (folder if folder in CLASSES else "")
        assert r.correct == (r.predicted == r.ground_truth if r.ground_truth else None)
    assert "Accuracy" in controller.panel.summary.text()


# ------------------------------------------------------------------------------------------- the real window

@pytest.fixture
def real_window(main_window):
    return main_window


def _open_folder(qtbot, win, paths: list[Path], classifier) -> None:
    win.model_service.set_classifier(classifier)
    win.open_path(paths[0].parent.parent)
    qtbot.waitUntil(lambda: len(win.folder_paths()) == len(paths), timeout=20_000)


def test_real_window_classify_folder_badges_table_and_double_click(qtbot, real_window, synthetic_folder,
                                                                   artifacts_dir):
    win = real_window
    controller = win.results_controller
    assert "xrayviewer.ui.results_view" in win.extensions
    file_actions = win.menu("File").actions()
    export_at = file_actions.index(controller.export_menu.menuAction())
    quit_at = next(i for i, a in enumerate(file_actions) if "quit" in a.text().replace("&", "").lower())
    assert export_at < quit_at  # Export sits above Quit
    assert controller.classify_action in win.toolbar.actions() and win.menu("Tools").menuAction().isVisible()

    _open_folder(qtbot, win, synthetic_folder, FakeClassifier())
    with qtbot.waitSignal(controller.runFinished, timeout=60_000) as blocker:
        controller.classify_action.trigger()
    rows = blocker.args[0]
    assert len(rows) == len(synthetic_folder)
    items = {Path(it.path).name: it for it in win.folder_panel.model.items}
    assert items["covid_looks_normal.png"].row.predicted == "normal" and items["covid_looks_normal.png"].mismatch
    assert items["pneumonia_broken.png"].row.error
    assert controller.dock.isVisible() and controller.panel.summary.isVisible()
    win.grab().save(str(artifacts_dir / "results-window.png"))

    panel = controller.panel
    panel.mismatches.setChecked(True)
    panel.table.doubleClicked.emit(panel.proxy.index(0, 0))
    qtbot.waitUntil(lambda: win.current_path() is not None
                    and win.current_path().name == "covid_looks_normal.png", timeout=10_000)


def test_real_window_exports_what_is_on_screen(qtbot, real_window, synthetic_folder, tmp_path):
    win = real_window
    controller = win.results_controller
    _open_folder(qtbot, win, synthetic_folder, FakeClassifier())
    target = next(p for p in synthetic_folder if p.name == "covid_0.png")
    win.select_path(target)
    qtbot.waitUntil(lambda: win.current_explained() is not None
                    and Path(win.current_explained().path) == target.resolve(), timeout=20_000)
    # a method other than Grad-CAM on screen: the export must carry that map, not recompute Grad-CAM
    next(a for a in win.method_group.actions() if a.data() == "gradcam++").trigger()  # View › Explanation method
    qtbot.waitUntil(lambda: win.current_explained() is not None and win.current_explained().method == "gradcam++",
                    timeout=20_000)
    shown = win.current_explained().heatmap
    with qtbot.waitSignal(controller.reportWritten, timeout=60_000) as blocker:
        controller.export_heatmap(tmp_path / "on-screen.png")
    _overlay, raw = blocker.args[0]
    exported = read_heatmap_png16(raw)
    assert exported.shape == (60, 50)
    expected = cv2.resize(shown, (50, 60), interpolation=cv2.INTER_LINEAR)
    assert np.abs(exported - np.clip(expected, 0, 1)).max() <= 1 / 65535 + 1e-6
    with qtbot.waitSignal(controller.reportWritten, timeout=60_000) as blocker:
        controller.case_report(tmp_path / "r.pdf")
    (pdf,) = blocker.args[0]
    if shutil.which("pdftotext"):
        import subprocess

        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
        assert "Grad-CAM++" in text and "covid_0.png" in text


def test_menu_actions_ask_for_a_file_and_write_beside_it(qtbot, window, controller, tmp_path, monkeypatch,
                                                         synthetic_folder):
    from PySide6.QtWidgets import QFileDialog

    window.current = synthetic_folder[0]
    answers = iter([str(tmp_path / "report"), str(tmp_path / "map.png"), str(tmp_path / "table.csv")])
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (next(answers), "")))
    with qtbot.waitSignal(controller.reportWritten, timeout=60_000) as blocker:
        controller.case_report_action.trigger()
    assert blocker.args[0] == [tmp_path / "report.pdf", tmp_path / "report.png"]  # the PNG goes beside the PDF
    with qtbot.waitSignal(controller.reportWritten, timeout=60_000) as blocker:
        controller.heatmap_action.trigger()
    assert blocker.args[0] == [tmp_path / "map.png", tmp_path / "map-raw16.png"]
    window.paths = synthetic_folder
    _run(qtbot, controller)
    controller.export_csv_action.trigger()
    assert read_results_csv(tmp_path / "table.csv")[1]
