"""Model › Audit… and the training results' Audit tab, offscreen: a run to the end on a tiny synthetic dataset and
classifier (test_audit's), cancel mid-run, closing while running, install on the real window, the shipped model on a
few real images per class (../shared), and the Audit tab after a short real training."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QMenu, QMessageBox, QWidget
from test_audit import segmenter, synthetic  # noqa: F401 - module-scoped fixtures: one tiny model, one lung model
from test_training_dialog import GUI_BLOCK_LIMIT_S
from ui_fakes import Heartbeat

from xrayviewer.model import audit as audit_core
from xrayviewer.paths import DEFAULT_MODEL_DIR
from xrayviewer.ui import audit_dialog
from xrayviewer.ui.app import configure_app
from xrayviewer.ui.audit_dialog import AuditDialog, estimate_text, install, verdict
from xrayviewer.ui.workers import active_workers

RUN_TIMEOUT_MS = 120_000


class FakeModelService(QObject):
    modelChanged = Signal(object)

    def __init__(self, classifier=None, segmenter=None):
        super().__init__()
        self.classifier, self.segmenter = classifier, segmenter
        self.bundle_path = getattr(getattr(classifier, "bundle", None), "path", None)


class FakeWindow(QWidget):
    """What the dialog needs of the main window: menu(name), model_service, folder_paths()."""

    def __init__(self, classifier=None, segmenter=None, files=()):
        super().__init__()
        self.menus: dict[str, QMenu] = {}
        self.model_service = FakeModelService(classifier, segmenter)
        self.files = [Path(f) for f in files]

    def menu(self, name: str) -> QMenu:
        return self.menus.setdefault(name, QMenu(name, self))

    def folder_paths(self) -> list[Path]:
        return list(self.files)


@pytest.fixture(autouse=True)
def _dark_theme_and_no_real_dialogs(qapp, monkeypatch):
    """The app's look for the screenshots; a modal box or a real file browser would hang offscreen."""
    configure_app(qapp)

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected message box: {args[1:3]}")

    for name in ("question", "warning", "critical", "information"):
        monkeypatch.setattr(QMessageBox, name, staticmethod(refuse))
    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(lambda url: opened.append(url.toLocalFile())))
    return opened


def _wait_idle(qtbot) -> None:
    qtbot.waitUntil(lambda: not active_workers(), timeout=20000)


def _dialog(qtbot, window) -> AuditDialog:
    qtbot.addWidget(window)
    dialog = AuditDialog(window)
    dialog.resize(1100, 820)
    dialog.show()
    qtbot.waitUntil(lambda: dialog.counts is not None, timeout=20000)
    return dialog


def test_audit_dialog_runs_to_the_end_and_shows_summary_and_figures(qtbot, synthetic, segmenter, tmp_path,
                                                                    artifacts_dir, _dark_theme_and_no_real_dialogs):
    root, classifier, _bundle = synthetic
    files = sorted(root.glob("*/*.png"))
    dialog = _dialog(qtbot, FakeWindow(classifier, segmenter, files))
    assert dialog.folder_edit.text() == str(root)            # the folder open in the viewer
    # a/broken.png has a valid header: counted here, reported as unreadable by the audit
    assert dialog.counts == {"a": 7, "b": 6} and dialog.limit.value() == audit_dialog.DEFAULT_LIMIT
    rows, cols = classifier.input_size               # a small model: the estimate follows its input size
    assert dialog.estimate.text().startswith(f"{estimate_text(13, input_size=(rows, cols))} (a 7, b 6 in the folder")
    dialog.limit.setValue(4)
    assert "8 images" in dialog.estimate.text()
    dialog.limit.setValue(0)
    assert dialog.limit.text() == "all" and "13 images" in dialog.estimate.text()
    assert "tiny" in dialog.model_label.text()
    out = tmp_path / "report"
    dialog.out_edit.setText(str(out))

    runner = dialog.runner
    assert runner.start_button.isEnabled() and not runner.results.isVisible()
    heartbeat = Heartbeat()
    runner.start_button.click()
    assert runner.is_running() and runner.cancel_button.isEnabled() and not dialog.folder_edit.isEnabled()
    qtbot.waitUntil(lambda: runner.state != "running" and not runner.is_running(), timeout=RUN_TIMEOUT_MS)
    _wait_idle(qtbot)
    heartbeat.timer.stop()
    assert heartbeat.longest < GUI_BLOCK_LIMIT_S     # the audit's TensorFlow work never ran on the GUI thread
    assert runner.state == "done", runner.status.text()
    assert "Finished: 12 images" in runner.status.text() and str(out) in runner.status.text()
    assert "1 unreadable" in runner.status.text()
    assert runner.start_button.isEnabled() and not runner.cancel_button.isEnabled() and dialog.folder_edit.isEnabled()
    assert runner.bar.value() == runner.bar.maximum() == 13

    summary = json.loads((out / "summary.json").read_text())
    results = runner.results
    assert results.isVisible() and "12 images" in results.title.text() and "cancelled" not in results.title.text()
    att = summary["lung_attention"]
    assert results.mean_attention.value.text() == f"{att['mean']:.0%}"
    assert results.outside.value.text() == f"{att['share_below_50']:.0%}"
    for key in ("as_is", "lungs_blacked_out", "only_lungs"):
        assert results.cells[(key, "accuracy")].text() == f"{summary['performance'][key]['accuracy']:.3f}"
    level, text = verdict(summary)
    assert results.verdict.text() == text and results.verdict_level == level
    assert "Shortcut audit" in results.summary_browser.toPlainText()
    assert "lungs blacked out" in results.summary_browser.toPlainText()
    shown = {name for name, view in results.figures.items() if view._pixmap is not None}
    assert shown == {"masking.png", "mean_heatmaps.png", "lung_attention.png", "by_source.png"}  # manifest: sources
    assert all(results.tabs.isTabVisible(i) for i in range(results.tabs.count()))
    # shown in the window's colours (transparent, light text), while the report's PNG files keep white for documents
    import cv2

    masking = runner.outcome.figures["masking.png"]
    assert masking[0, 0, 3] == 0 and cv2.imread(str(out / "masking.png"))[0, 0].tolist() == [255, 255, 255]

    # a click opens the full-size PNG; "Open report folder" opens the folder (QDesktopServices, patched here)
    opened = _dark_theme_and_no_real_dialogs
    results.tabs.setCurrentIndex(1)
    qtbot.mouseClick(results.figures["masking.png"], audit_dialog.Qt.MouseButton.LeftButton)
    runner.open_button.click()
    assert opened == [str(out / "masking.png"), str(out)]

    results.tabs.setCurrentIndex(0)
    dialog.grab().save(str(artifacts_dir / "audit_dialog_synthetic.png"))
    results.tabs.setCurrentIndex(2)
    dialog.grab().save(str(artifacts_dir / "audit_dialog_synthetic_heatmaps.png"))
    dialog.close()


def test_cancel_mid_run_reports_cancelled_and_the_dialog_stays_usable(qtbot, synthetic, segmenter, tmp_path,
                                                                      monkeypatch):
    root, classifier, _bundle = synthetic
    dialog = _dialog(qtbot, FakeWindow(classifier, segmenter, sorted(root.glob("*/*.png"))))
    dialog.limit.setValue(0)
    gate, third_image = threading.Event(), threading.Event()
    real_analyze = classifier.analyze

    def slow_analyze(radiograph):     # the 3rd image waits until the test has pressed Cancel
        if slow_analyze.calls == 2:
            third_image.set()
            gate.wait(10)
        slow_analyze.calls += 1
        return real_analyze(radiograph)

    slow_analyze.calls = 0
    monkeypatch.setattr(classifier, "analyze", slow_analyze)
    dialog.out_edit.setText(str(tmp_path / "cancelled"))
    dialog.runner.start_button.click()
    qtbot.waitUntil(third_image.is_set, timeout=RUN_TIMEOUT_MS)
    dialog.runner.cancel_button.click()
    assert "Cancelling" in dialog.runner.status.text() and not dialog.runner.cancel_button.isEnabled()
    gate.set()
    qtbot.waitUntil(lambda: not dialog.runner.is_running() and dialog.runner.state != "running", timeout=30000)
    _wait_idle(qtbot)
    runner = dialog.runner
    assert runner.state == "cancelled" and "cancelled" in runner.status.text()
    assert "3 images done so far" in runner.status.text()
    assert "cancelled" in runner.results.title.text() and runner.open_button.isEnabled()
    assert json.loads((tmp_path / "cancelled" / "summary.json").read_text())["cancelled"] is True
    assert "cancelled" in runner.results.summary_browser.toPlainText()
    # usable again: a second, full run ends normally into a new automatic folder
    monkeypatch.setattr(classifier, "analyze", real_analyze)
    dialog.limit.setValue(1)
    dialog.out_edit.clear()
    assert runner.start_button.isEnabled()
    runner.start_button.click()
    qtbot.waitUntil(lambda: not runner.is_running() and runner.state != "running", timeout=RUN_TIMEOUT_MS)
    _wait_idle(qtbot)
    assert runner.state == "done" and "Finished" in runner.status.text()
    assert runner.outcome.summary["limit_per_class"] == 1 and not runner.outcome.summary["cancelled"]
    assert runner.out_dir.parent.name == "audits" and (runner.out_dir / "summary.md").is_file()
    dialog.close()


def test_reset_mid_run_ignores_the_old_runs_report(qtbot, synthetic, segmenter, tmp_path, monkeypatch):
    """A new training result while the previous one's audit runs: that audit stops and shows nothing."""
    root, classifier, _bundle = synthetic
    runner = audit_dialog.AuditRunner()
    qtbot.addWidget(runner)
    runner.show()
    gate, started = threading.Event(), threading.Event()
    real_analyze = classifier.analyze

    def waiting_analyze(radiograph):
        started.set()
        gate.wait(10)
        return real_analyze(radiograph)

    monkeypatch.setattr(classifier, "analyze", waiting_analyze)
    runner.start(root, tmp_path / "old", classifier=classifier, segmenter=segmenter)
    qtbot.waitUntil(started.is_set, timeout=RUN_TIMEOUT_MS)
    old_worker = runner.worker
    runner.reset()
    gate.set()
    qtbot.waitUntil(old_worker.done.is_set, timeout=30000)
    qtbot.wait(100)
    assert runner.outcome is None and not runner.results.isVisible() and runner.status.text() == ""
    assert runner.start_button.isEnabled() and not runner.open_button.isEnabled()
    _wait_idle(qtbot)


def test_closing_while_running_asks_then_cancels_and_closes(qtbot, synthetic, segmenter, tmp_path, monkeypatch):
    root, classifier, _bundle = synthetic
    dialog = _dialog(qtbot, FakeWindow(classifier, segmenter, sorted(root.glob("*/*.png"))))
    answers = [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes]
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: answers.pop(0)))
    dialog.out_edit.setText(str(tmp_path / "closing"))
    dialog.runner.start_button.click()
    dialog.close()                                       # "No": the audit goes on
    assert dialog.isVisible() and dialog.runner.is_running()
    dialog.close()                                       # "Yes": cancelled, closes once the worker stopped
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=30000)
    assert not answers and dialog.runner.state == "cancelled"
    _wait_idle(qtbot)


def test_bad_folder_and_no_model_are_messages_not_crashes(qtbot, synthetic, tmp_path):
    _root, classifier, _bundle = synthetic
    window = FakeWindow(classifier, None, [])
    qtbot.addWidget(window)
    dialog = AuditDialog(window)
    dialog.show()
    assert dialog.folder_edit.text() == "" and not dialog.runner.start_button.isEnabled()
    (tmp_path / "empty").mkdir()
    dialog.set_folder(tmp_path / "empty")
    qtbot.waitUntil(lambda: "no images" in dialog.estimate.text() or "class" in dialog.estimate.text(),
                    timeout=20000)
    assert dialog.counts is None and not dialog.runner.start_button.isEnabled()
    dialog.close()
    nomodel = FakeWindow(None, None, [])
    qtbot.addWidget(nomodel)
    dialog = AuditDialog(nomodel)
    assert "No model" in dialog.model_label.text() and not dialog.runner.start_button.isEnabled()
    dialog.close()
    _wait_idle(qtbot)


def test_verdict_and_estimate_in_plain_words():
    def summary(removed, as_is=0.9, outside=0.2):
        return {"performance": {"as_is": {"macro_auc": as_is}, "lungs_blacked_out": {"macro_auc": removed}},
                "lung_attention": {"share_below_50": outside}}

    level, text = verdict(summary(0.85))
    assert level == "warning" and "still scores well with the lungs blacked out" in text and "shortcuts" in text
    assert verdict(summary(0.52))[0] == "ok" and "near chance" in verdict(summary(0.52))[1]
    assert verdict(summary(0.52, outside=0.8))[0] == "warning"
    assert verdict(summary(0.65))[0] == "info"
    assert verdict(summary(None))[0] == "info" and "Not enough" in verdict(summary(None))[1]
    # the dialog's thresholds are the core's (xrayviewer.model.audit.findings)
    def core_finding(removed):
        aucs = dict(zip(audit_core.CONDITIONS, (0.9, removed, None)))
        return audit_core.findings({"lung_attention": {"mean": None}, "classes": [],
                                    "performance": {c: {"macro_auc": v} for c, v in aucs.items()}})[0]

    assert "reading shortcuts" in core_finding(audit_dialog.SHORTCUT_AUC)
    assert "some signal" in core_finding(audit_dialog.SHORTCUT_AUC - 0.01)
    assert "some signal" in core_finding(audit_dialog.CHANCE_LEVEL_AUC)
    assert "little signal" in core_finding(audit_dialog.CHANCE_LEVEL_AUC - 0.01)
    assert estimate_text(90) == "90 images: about 30 s" and estimate_text(1, loading=True).startswith("1 image:")
    assert estimate_text(46, input_size=(336, 336)) == "46 images: about 21 s"   # measured: 21-22 s
    # on a machine where the classifier's own pass ran 2x slower than on the reference machine (measured: 55 s there)
    slow = SimpleNamespace(seconds_per_analysis=0.309, input_size=(336, 336))
    assert audit_dialog.machine_slowness(slow) == pytest.approx(2.0, rel=0.01)
    assert estimate_text(46, input_size=(336, 336), slowness=2.0) == "46 images: about 42 s"
    assert audit_dialog.machine_slowness(SimpleNamespace(seconds_per_analysis=None, input_size=(336, 336))) == 1.0
    assert audit_dialog.machine_slowness(None) == 1.0
    assert audit_dialog.machine_slowness(SimpleNamespace(seconds_per_analysis=100.0, input_size=(224, 224))) == 8.0


def test_install_adds_model_audit_to_the_real_main_window(qtbot, tmp_path, monkeypatch):
    from xrayviewer.ui.main_window import MainWindow

    monkeypatch.setenv("XRAYVIEWER_SETTINGS_DIR", str(tmp_path / "settings"))
    win = MainWindow()
    qtbot.addWidget(win)
    assert "xrayviewer.ui.audit_dialog" in win.extensions
    actions = {a.text(): a for a in win.menu("Model").actions()}
    assert "Audit…" in actions
    actions["Audit…"].trigger()
    dialog = win._audit_launcher.dialog
    assert dialog.isVisible() and dialog.parent() is win and dialog.window_ is win
    dialog.close()
    win.close()
    _wait_idle(qtbot)


def test_install_on_a_window_without_a_model(qtbot):
    window = FakeWindow()
    qtbot.addWidget(window)
    launcher = install(window)
    [action] = window.menus["Model"].actions()
    assert action.text() == "Audit…"
    action.trigger()
    assert launcher.dialog.isVisible() and not launcher.dialog.runner.start_button.isEnabled()
    launcher.dialog.close()


@pytest.mark.shared
@pytest.mark.slow
def test_audit_dialog_with_the_shipped_model_on_real_images(qtbot, shared_data, segmenter, tmp_path, artifacts_dir):
    from xrayviewer.model.classifier import Classifier

    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        pytest.skip("models/default is not there yet")
    classifier = Classifier.load(DEFAULT_MODEL_DIR)
    cxr = shared_data / "cxr"
    dialog = _dialog(qtbot, FakeWindow(classifier, segmenter, sorted(cxr.glob("*/*"))[:50]))
    if dialog.folder_edit.text() != str(cxr):
        dialog.set_folder(cxr)
        qtbot.waitUntil(lambda: dialog.counts is not None, timeout=60000)
    assert set(classifier.classes) <= set(dialog.counts)
    assert "other: not a class of the model" in dialog.estimate.text()
    dialog.limit.setValue(3)
    dialog.out_edit.setText(str(tmp_path / "real"))
    dialog.runner.start_button.click()
    qtbot.waitUntil(lambda: not dialog.runner.is_running() and dialog.runner.state != "running",
                    timeout=RUN_TIMEOUT_MS)
    _wait_idle(qtbot)
    runner = dialog.runner
    assert runner.state == "done", runner.status.text()
    summary = runner.outcome.summary
    assert summary["images"] == 3 * len(dialog.counts) and not summary["failed"] and summary["by_source"]
    assert summary["performance"]["as_is"]["n"] == 3 * len(classifier.classes)   # "other" counts for attention only
    assert runner.results.figures["by_source.png"]._pixmap is not None
    assert runner.results.verdict.text() and runner.results.cells[("as_is", "accuracy")].text() != "–"
    dialog.grab().save(str(artifacts_dir / "audit_dialog_real.png"))
    dialog.close()


def test_training_results_audit_tab_audits_the_new_model_on_its_validation_split(qtbot, tmp_path_factory,
                                                                                  segmenter, artifacts_dir):
    from test_training_dialog import PER_CLASS, _check, _quick_settings, _train_to_results, make_dataset

    from xrayviewer.ui.training_dialog import TrainingDialog

    data = make_dataset(tmp_path_factory.mktemp("train-audit"), per_class=PER_CLASS)
    window = FakeWindow(None, segmenter)            # no model in the viewer; its lung model is reused
    qtbot.addWidget(window)
    dialog = TrainingDialog(window)
    dialog.resize(1100, 820)
    dialog.show()
    results = dialog.results_page
    panel = results.audit_panel
    assert results.tabs.tabText(results.tabs.count() - 1) == "Audit"
    assert not panel.runner.start_button.isEnabled() and "once the training has finished" in panel.intro.text()
    _check(qtbot, dialog, data)
    _quick_settings(dialog)
    _train_to_results(qtbot, dialog)

    validation = dialog.result.split["validation"]["paths"]
    assert panel.validation_files() == validation and validation
    assert f"its {len(validation)} validation images" in panel.intro.text()
    results.tabs.setCurrentWidget(panel)
    assert panel.runner.start_button.isEnabled()
    panel.runner.start_button.click()
    runner = panel.runner
    qtbot.waitUntil(lambda: not runner.is_running() and runner.state != "running", timeout=RUN_TIMEOUT_MS)
    _wait_idle(qtbot)
    assert runner.state == "done", runner.status.text()
    summary = runner.outcome.summary
    assert summary["images"] == len(validation) and summary["subset"] == f"{len(validation)} listed files"
    assert summary["classes"] == ["clear", "opaque"] and summary["dataset"] == str(data)
    assert runner.results.isVisible() and runner.results.verdict.text()
    assert runner.results.figures["masking.png"]._pixmap is not None
    assert runner.out_dir.parent.name == "audits" and (runner.out_dir / "summary.json").is_file()
    dialog.grab().save(str(artifacts_dir / "training_dialog_results_audit.png"))
    dialog.close()
    _wait_idle(qtbot)
