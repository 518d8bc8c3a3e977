"""The viewer window on synthetic images with a fake classifier (always runs, fast): browse, navigate, heatmap
options, errors, stale results, settings. The same flows on real radiographs with the real model: test_ui_real.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, QRectF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QImage, QKeySequence, QPainter
from PySide6.QtWidgets import QApplication

from ui_fakes import FakeClassifier, Heartbeat, marker_image, synthetic_folder, wait_shown, write_png
from xrayviewer import DISCLAIMER
from xrayviewer.ui.cache import LRUCache
from xrayviewer.ui.jobs import DISPLAY_MAX_SIDE, ground_truth_for
from xrayviewer.ui.shortcuts import SHORTCUTS


@pytest.fixture
def settings_dir(tmp_path, monkeypatch):
    path = tmp_path / "settings"
    monkeypatch.setenv("XRAYVIEWER_SETTINGS_DIR", str(path))
    return path


@pytest.fixture
def window(settings_dir, main_window):
    return main_window


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "cases"
    synthetic_folder(root, n_per_class=3)
    return root


def open_with_fake(qtbot, win, folder, delay=0.0, select=None):
    fake = FakeClassifier(delay=delay)
    win.model_service.set_classifier(fake)
    win.open_path(folder, select=select)
    qtbot.waitUntil(lambda: win.folder_panel.model.rowCount() > 0, timeout=5000)
    return fake


# ---------------------------------------------------------------------------------------------- window

def test_window_opens_with_menus_disclaimer_and_no_model(window):
    titles = [a.text().replace("&", "") for a in window.menuBar().actions() if a.isVisible()]
    for name in ("File", "View", "Model", "Help"):
        assert name in titles
        assert window.menu(name) is not None
    assert window.prediction.disclaimer.text() == DISCLAIMER and window.prediction.disclaimer.isVisible()
    assert window.model_service.classifier is None
    assert window.current_path() is None and window.current_analysis() is None and window.folder_paths() == []
    assert not window.windowIcon().isNull() or not QApplication.windowIcon().isNull()


def test_window_appears_before_tensorflow_is_imported(tmp_path):
    code = ("import os, sys; os.environ['QT_QPA_PLATFORM']='offscreen';"
            f"os.environ['XRAYVIEWER_SETTINGS_DIR']={str(tmp_path)!r};"
            "from PySide6.QtWidgets import QApplication; app=QApplication([]);"
            "from xrayviewer.ui.main_window import MainWindow; w=MainWindow(); w.show(); app.processEvents();"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, w.isVisible())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-3:] == ["False", "False", "True"]


def test_window_appears_before_sklearn_and_scipy_are_imported(tmp_path):
    """They are slow to import and only the model (Keras pulls both in) and training need them: none of the
    window's modules, extensions or start-up workers may import them before the first paint."""
    code = ("import os, sys; os.environ['QT_QPA_PLATFORM']='offscreen';"
            f"os.environ['XRAYVIEWER_SETTINGS_DIR']={str(tmp_path)!r};"
            "from PySide6.QtCore import QTimer; from PySide6.QtWidgets import QApplication; app=QApplication([]);"
            "from xrayviewer.ui.main_window import MainWindow; w=MainWindow(); w.show(); app.processEvents();"
            "seen=[];"   # after one pass of the event loop (the first paint): what is imported, is the window up
            "QTimer.singleShot(0, lambda: (seen.extend([*(m in sys.modules for m in ('sklearn', 'scipy')),"
            " w.isVisible()]), app.quit())); app.exec(); print(*seen, flush=True);"
            "os._exit(0)")  # don't wait for the model-loading worker (TensorFlow import) to finish
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-3:] == ["False", "False", "True"]


def test_open_folder_shows_prediction_heatmap_badges_and_ground_truth(qtbot, window, folder):
    fake = open_with_fake(qtbot, window, folder)
    ex = wait_shown(qtbot, window)
    paths = window.folder_paths()
    assert len(paths) == 6 and paths[0].name == "covid_00.png"
    assert window.current_path() == paths[0]
    assert ex.row.predicted in window.prediction.headline.text()
    assert window.current_analysis() is ex.analysis
    assert "Grad-CAM" in window.viewer.right_title.text()
    # work ran off the GUI thread
    assert fake.threads and "MainThread" not in fake.threads
    # every file gets its badge in the background; folder names are the ground truth
    qtbot.waitUntil(lambda: all(it.row is not None for it in window.folder_panel.model.items), timeout=10_000)
    items = window.folder_panel.model.items
    assert {it.ground_truth for it in items} == {"covid", "normal"}
    qtbot.waitUntil(lambda: all(it.thumbnail is not None for it in items), timeout=5000)
    # mismatches are exactly predicted != folder
    assert [it.mismatch for it in items] == [it.row.predicted != it.ground_truth for it in items]


def test_keyboard_navigation(qtbot, window, folder):
    open_with_fake(qtbot, window, folder)
    wait_shown(qtbot, window)
    paths = window.folder_paths()
    window.folder_panel.list.setFocus()
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_Right)
    wait_shown(qtbot, window, paths[1])
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_J)
    wait_shown(qtbot, window, paths[2])
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_K)
    wait_shown(qtbot, window, paths[1])
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_End)
    wait_shown(qtbot, window, paths[-1])
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_Left)
    wait_shown(qtbot, window, paths[-2])
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_Home)
    wait_shown(qtbot, window, paths[0])
    assert window.select_path(paths[3])
    wait_shown(qtbot, window, paths[3])
    # with the image view focused (after a click), the arrows still browse instead of scrolling the view
    window.viewer.right.setFocus()
    qtbot.keyClick(window.viewer.right, Qt.Key.Key_Right)
    wait_shown(qtbot, window, paths[4])


def test_overlay_opacity_method_and_target_class(qtbot, window, folder):
    open_with_fake(qtbot, window, folder)
    ex = wait_shown(qtbot, window)
    viewer = window.viewer
    assert viewer.left_box.isVisible() and not viewer.overlay
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_O)        # overlay: one view with the heatmap on it
    assert viewer.overlay and not viewer.left_box.isVisible()
    assert window.heatmap_controls.overlay.isChecked()
    window.heatmap_controls.overlay.setChecked(False)              # and back from the panel
    assert not viewer.overlay and viewer.left_box.isVisible()

    window.heatmap_controls.opacity.setValue(80)
    assert viewer.right.heat_item.opacity() == pytest.approx(0.8)
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_BracketLeft)
    assert viewer.right.heat_item.opacity() == pytest.approx(0.7)

    box = window.heatmap_controls.method
    box.setCurrentIndex(box.findData("gradcam++"))
    qtbot.waitUntil(lambda: viewer.explained is not None and viewer.explained.method == "gradcam++", timeout=5000)
    assert "Grad-CAM++" in viewer.right_title.text()
    first = ex.heatmap
    assert not np.allclose(viewer.explained.heatmap, first)     # a different map, not the cached Grad-CAM

    target = window.heatmap_controls.target
    other = (ex.class_index + 1) % 3
    target.setCurrentIndex(target.findData(other))
    qtbot.waitUntil(lambda: viewer.explained is not None and viewer.explained.class_index == other, timeout=5000)
    assert window.prediction.bars.target == other
    # clicking a probability bar picks the class too
    window.prediction.classClicked.emit(ex.class_index)
    qtbot.waitUntil(lambda: viewer.explained.class_index == ex.class_index, timeout=5000)

    window.heatmap_controls.colormap.setCurrentIndex(window.heatmap_controls.colormap.findData("inferno"))
    assert viewer.colormap == "inferno"
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_C)          # hide the heatmap
    assert viewer.right.heat_item.pixmap().isNull()
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_C)
    assert not viewer.right.heat_item.pixmap().isNull()


def _hot_centroid(image: QImage) -> tuple[float, float]:
    """(row, col) centroid of the reddest pixels of a rendered jet heatmap."""
    image = image.convertToFormat(QImage.Format.Format_RGBA8888)
    arr = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    arr = arr[:, :image.width(), :3].astype(int)
    redness = arr[..., 0] - arr[..., 2]
    hot = redness >= redness.max() - 20
    rows, cols = np.nonzero(hot)
    return float(rows.mean()), float(cols.mean())


@pytest.mark.parametrize("shape,marker", [((600, 500), (150, 360)), ((1500, 1100), (1100, 250))])
def test_heatmap_lies_on_the_marker(qtbot, window, tmp_path, shape, marker):
    """A synthetic image with one bright marker; the fake's cam is hot where the image is bright. The heatmap the
    viewer draws (also when downsampled for display: 1500 px > DISPLAY_MAX_SIDE) peaks on the marker."""
    path = write_png(tmp_path / "m" / "marker.png", marker_image(shape, marker, radius=30))
    open_with_fake(qtbot, window, path)
    wait_shown(qtbot, window)
    canvas = window.viewer.right
    window.viewer.set_opacity(1.0)
    # render only the heatmap item's scene extent at image resolution
    canvas.image_item.hide()
    rows, cols = shape
    image = QImage(cols, rows, QImage.Format.Format_RGBA8888)
    image.fill(0)
    painter = QPainter(image)
    canvas.scene().render(painter, QRectF(image.rect()), canvas.image_rect())
    painter.end()
    canvas.image_item.show()
    r, c = _hot_centroid(image)
    tolerance = 0.03 * max(shape) + 8    # the fake cam is a 14x14 grid: one cell ~ 1/14 of the side
    assert abs(r - marker[0]) < tolerance and abs(c - marker[1]) < tolerance, (r, c, marker)
    if max(shape) > DISPLAY_MAX_SIDE:
        assert window.viewer.explained.heatmap.shape[0] <= DISPLAY_MAX_SIDE


@pytest.mark.parametrize("shape,marker", [((600, 500), (120, 380)), ((2400, 1800), (500, 1300))])
def test_heatmap_follows_rotation_and_flip_with_the_image(qtbot, window, tmp_path, shape, marker):
    """Rotation/flip are view transforms shared by both panes: on screen the hot spot stays on the marker — also
    when a large image is drawn from a reduced copy (zoomed out)."""
    path = write_png(tmp_path / "m" / "marker.png", marker_image(shape, marker, radius=max(30, max(shape) // 14)))
    open_with_fake(qtbot, window, path)
    wait_shown(qtbot, window)
    window.viewer.set_opacity(1.0)
    for key in (Qt.Key.Key_R, Qt.Key.Key_H, Qt.Key.Key_V):
        qtbot.keyClick(window.folder_panel.list, key)
    assert window.viewer.state.rotation == 90 and window.viewer.state.flip_h and window.viewer.state.flip_v
    if max(shape) > 2000:   # zoomed out: drawn from a copy reduced by area averaging, still over the full extent
        qtbot.waitUntil(lambda: window.viewer.left.image_item.pixmap().width() < shape[1], timeout=2000)
        assert window.viewer.left.image_item.sceneBoundingRect().width() == pytest.approx(shape[1])
    QApplication.processEvents()
    left = window.viewer.left.viewport().grab().toImage().convertToFormat(QImage.Format.Format_RGBA8888)
    right = window.viewer.right.viewport().grab().toImage()
    arr = np.frombuffer(left.constBits(), np.uint8).reshape(left.height(), left.bytesPerLine() // 4, 4)
    bright = arr[:, :left.width(), 0] > 230
    mr, mc = np.nonzero(bright)
    hr, hc = _hot_centroid(right)
    assert abs(hr - mr.mean()) < 15 and abs(hc - mc.mean()) < 15
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_Space)    # reset
    assert window.viewer.state.rotation == 0 and not window.viewer.state.flip_h


def test_zoom_pan_are_linked_and_window_level(qtbot, window, folder):
    open_with_fake(qtbot, window, folder)
    wait_shown(qtbot, window)
    v = window.viewer
    fit = v.state.zoom
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_1)
    assert v.state.zoom == pytest.approx(1.0) and not v.state.fit
    v.zoom_by(2.0)
    assert v.left.transform().m11() == pytest.approx(v.right.transform().m11()) == pytest.approx(2.0)
    v.left.horizontalScrollBar().setValue(v.left.horizontalScrollBar().value() + 40)
    a, b = v.left.view_center(), v.right.view_center()
    assert abs(a.x() - b.x()) < 1.5 and abs(a.y() - b.y()) < 1.5
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_Equal)
    assert v.state.fit and v.state.zoom == pytest.approx(fit, rel=0.05)
    # right-drag: width and level
    vp = v.left.viewport()
    qtbot.mousePress(vp, Qt.MouseButton.RightButton, pos=QPoint(100, 100))
    qtbot.mouseMove(vp, QPoint(160, 130))
    qtbot.mouseRelease(vp, Qt.MouseButton.RightButton, pos=QPoint(160, 130))
    assert v.state.width != 1.0 or v.state.center != 0.5
    assert window.display_controls.width.value() == round(v.state.width * 100)
    before = v.left.image_item.pixmap().toImage().pixelColor(10, 10).red()
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_I)
    QApplication.processEvents()
    after = v.left.image_item.pixmap().toImage().pixelColor(10, 10).red()
    assert v.state.invert and after != before
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_Space)
    assert (v.state.center, v.state.width, v.state.invert) == (0.5, 1.0, False)


def test_unreadable_file_shows_error_badge_and_app_goes_on(qtbot, window, folder):
    bad = folder / "covid" / "covid_00b.png"
    bad.write_text("this is not an image")
    open_with_fake(qtbot, window, folder)
    wait_shown(qtbot, window)
    assert window.select_path(bad)
    qtbot.waitUntil(lambda: window.prediction.error.isVisible(), timeout=5000)
    assert "Cannot read" in window.prediction.error.text()
    qtbot.waitUntil(lambda: window.folder_panel.model.item(str(bad.resolve())).error != "", timeout=5000)
    qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_Right)
    ex = wait_shown(qtbot, window)
    assert ex.row.error == "" and not window.prediction.error.isVisible()
    window.folder_panel.filter_box.setCurrentIndex(window.folder_panel.filter_box.findData("error"))
    assert window.folder_panel.paths() == [str(bad.resolve())]


def test_rapid_navigation_never_shows_a_mismatched_heatmap(qtbot, window, folder):
    seen = []

    def check(ex):
        # whatever is drawn: heatmap and image belong to the same file and content
        seen.append(ex.path)
        assert window.viewer.image is not None
        assert ex.path == window.viewer.image.path and ex.sha256 == window.viewer.image.sha256

    window.session.explained.connect(check)
    fake = open_with_fake(qtbot, window, folder, delay=0.04)
    wait_shown(qtbot, window)
    for _ in range(3):
        for _ in range(5):
            qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_Right)
            qtbot.wait(5)
        for _ in range(4):
            qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_Left)
            qtbot.wait(5)
    ex = wait_shown(qtbot, window)
    assert Path(ex.path) == window.current_path()
    assert window.viewer.image.path == ex.path
    assert fake.calls <= 6 + len(seen) + 6      # stale requests were dropped, not all computed


def test_stale_results_are_dropped_by_the_session(qtbot, window, folder):
    open_with_fake(qtbot, window, folder, delay=0.15)
    wait_shown(qtbot, window)
    shown = []
    window.session.explained.connect(lambda ex: shown.append(ex.path))
    paths = [str(p) for p in window.folder_paths()]
    window.session.select(paths[1])
    window.session.select(paths[4])
    qtbot.waitUntil(lambda: bool(shown), timeout=5000)
    qtbot.wait(400)
    assert shown == [paths[4]]


def test_cache_makes_revisits_instant_and_prefetches_neighbours(qtbot, window, folder):
    fake = open_with_fake(qtbot, window, folder)
    wait_shown(qtbot, window)
    paths = window.folder_paths()
    # the next image is prefetched: its read+analysis are already cached
    qtbot.waitUntil(lambda: window.session.caches.images.get(str(paths[1])) is not None, timeout=5000)
    window.select_path(paths[1])
    wait_shown(qtbot, window, paths[1])
    window.select_path(paths[0])
    wait_shown(qtbot, window, paths[0])
    qtbot.wait(200)
    facts = window.prediction.facts
    labels = [facts.itemAt(i).widget().text() for i in range(facts.count()) if facts.itemAt(i).widget()]
    assert "Size" in labels and not window.prediction.status.isVisible()   # a cached image shows its facts too
    for path in paths[:2]:                 # each analysed once: prefetch, badges and revisits share the cache
        assert [p for p in fake.analyzed if p == str(path)] == [str(path)]


def test_lru_cache_is_bounded():
    cache = LRUCache(max_bytes=3 * 1000, max_items=10)
    for i in range(6):
        cache.put(i, np.zeros(1000, np.uint8))
    assert len(cache) == 3 and cache.total_bytes <= 3000
    assert cache.get(0) is None and cache.get(5) is not None
    cache.get(3)
    cache.put(6, np.zeros(1000, np.uint8))
    assert cache.get(3) is not None and cache.get(4) is None
    cache.clear()
    assert len(cache) == 0 and cache.total_bytes == 0


def test_lru_cache_keeps_the_pinned_image_within_its_budget():
    """The image on screen is pinned: prefetched neighbours evict older entries, never it, and one that cannot
    fit beside it is not kept (the view holds the pinned image anyway, so keeping both would exceed the budget)."""
    cache = LRUCache(max_bytes=3 * 1000, max_items=10)
    cache.pin("current")                    # pinned before its read finishes, as ImageSession.select does
    cache.put("older", np.zeros(1000, np.uint8))
    cache.put("current", np.zeros(2000, np.uint8))
    cache.put("next", np.zeros(1000, np.uint8))
    assert cache.get("current") is not None and cache.get("next") is not None and cache.get("older") is None
    cache.put("previous", np.zeros(1500, np.uint8))   # cannot fit beside the pinned 2000 bytes
    assert cache.get("current") is not None and cache.get("previous") is None and cache.total_bytes <= 3000
    cache.pin(None)                         # nothing on screen: plain LRU again
    cache.put("other", np.zeros(2500, np.uint8))
    assert cache.get("current") is None and cache.get("other") is not None and cache.total_bytes <= 3000


def test_filter_and_sort(qtbot, window, folder):
    open_with_fake(qtbot, window, folder)
    wait_shown(qtbot, window)
    qtbot.waitUntil(lambda: all(it.row is not None for it in window.folder_panel.model.items), timeout=10_000)
    panel = window.folder_panel
    items = {it.path: it for it in panel.model.items}
    panel.sort_box.setCurrentIndex(panel.sort_box.findData("confidence_down"))
    confs = [items[p].row.confidence for p in panel.paths()]
    assert confs == sorted(confs, reverse=True)
    panel.filter_box.setCurrentIndex(panel.filter_box.findData("truth:normal"))
    assert panel.paths() and all(items[p].ground_truth == "normal" for p in panel.paths())
    panel.filter_box.setCurrentIndex(panel.filter_box.findData("mismatch"))
    assert all(items[p].mismatch for p in panel.paths())
    predicted = next(iter(items.values())).row.predicted
    panel.filter_box.setCurrentIndex(panel.filter_box.findData(f"predicted:{predicted}"))
    assert panel.paths() and all(items[p].row.predicted == predicted for p in panel.paths())


def test_set_badge_api_and_ground_truth_from_folders(qtbot, window, folder):
    from xrayviewer.results import ResultRow

    open_with_fake(qtbot, window, folder)
    path = window.folder_paths()[2]
    window.set_badge(path, ResultRow(path=str(path), probabilities={"covid": 0.1, "normal": 0.9, "pneumonia": 0.0},
                                     predicted="normal", ground_truth="covid"))
    item = window.folder_panel.model.item(str(path))
    assert item.row.predicted == "normal" and item.mismatch
    assert ground_truth_for("/x/Normal/a.png", ["covid", "normal"]) == "normal"
    assert ground_truth_for("/x/misc/a.png", ["covid", "normal"]) == ""


def test_drop_a_folder_opens_it(qtbot, window, folder):
    window.model_service.set_classifier(FakeClassifier())
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    qtbot.waitUntil(lambda: len(window.folder_paths()) == 6, timeout=5000)
    wait_shown(qtbot, window)


def test_settings_are_remembered(qtbot, settings_dir, folder):
    from xrayviewer.ui.main_window import MainWindow

    first = MainWindow()
    qtbot.addWidget(first)
    first.model_service.set_classifier(FakeClassifier())
    first.open_path(folder)
    first.actions_by_id["overlay"].setChecked(True)
    first.heatmap_controls.opacity.setValue(70)
    first.heatmap_controls.colormap.setCurrentIndex(first.heatmap_controls.colormap.findData("viridis"))
    first.splitter.setSizes([300, 800, 300])
    first.close()
    assert (settings_dir / "settings.ini").is_file()
    second = MainWindow()
    qtbot.addWidget(second)
    assert second.viewer.overlay and second.viewer.opacity == pytest.approx(0.7)
    assert second.viewer.colormap == "viridis"
    assert second.settings.value("last_folder") == str(folder.resolve())
    assert second._recent_folders()[0] == str(folder.resolve())
    second.close()


def test_every_shortcut_is_listed_in_help(window):
    from xrayviewer.ui.dialogs import shortcuts_html

    html = shortcuts_html()
    for action_id, (text, keys, _group) in SHORTCUTS.items():
        assert text.replace("&", "") in html
        assert window.actions_by_id[action_id].shortcuts()
    for key in ("=", "R", "L", "H", "V", "I", "Space"):      # OHIF's view keys
        assert f"<b>{key}</b>" in html
    # the extensions' shortcuts (added to the window's menus when they install) are listed too, once each
    html = shortcuts_html(window)
    assert "<b>Ctrl+Shift+K</b></td><td>Classify folder" in html and "<b>Ctrl+T</b></td><td>Train…" in html
    menu_actions: list = []
    pending = [a.menu() for a in window.menuBar().actions() if a.menu() is not None]
    while pending:
        for action in pending.pop().actions():
            (pending if action.menu() is not None else menu_actions).append(action.menu() or action)
    for action in menu_actions:
        for key in action.shortcuts():
            assert f"<b>{key.toString(QKeySequence.SequenceFormat.PortableText)}</b>" in html, action.text()
    assert html.count("Classify folder") == 1


def test_model_load_failure_is_shown_not_raised(qtbot, window, tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "model.json").write_text("{not json")
    with qtbot.waitSignal(window.model_service.loadFailed, timeout=60_000) as blocker:
        window.use_model(bad)
    assert "model.json" in blocker.args[1]
    assert window.prediction.error.isVisible()


def test_desktop_entry_installs_launcher(tmp_path, monkeypatch):
    from xrayviewer.desktop_entry import install_desktop_entry

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert install_desktop_entry() == 0
    text = (tmp_path / "applications" / "xrayviewer.desktop").read_text()
    assert f'Exec="{sys.executable}" -m xrayviewer' in text
    assert (tmp_path / "icons" / "hicolor" / "scalable" / "apps" / "xrayviewer.svg").is_file()
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(["desktop-file-validate", str(tmp_path / "applications" / "xrayviewer.desktop")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_lung_attention_outline_and_heatmap_only_inside_the_lungs(qtbot, window, tmp_path):
    from ui_fakes import FakeSegmenter

    # the marker (and so the heat) is on the right half; the fake "lungs" are the left half
    path = write_png(tmp_path / "m" / "marker.png", marker_image((400, 400), (200, 300), radius=25))
    window.model_service.set_classifier(FakeClassifier(), FakeSegmenter())
    assert window.heatmap_controls.outline.isEnabled()
    window.open_path(path)
    ex = wait_shown(qtbot, window)
    assert ex.lung_attention is not None and ex.lung_attention < 0.5
    text = window.prediction.attention.text()
    assert window.prediction.attention.isVisible() and "% of the attention is on the lungs" in text and "⚠" in text
    window.actions_by_id["lung_outline"].setChecked(True)
    assert not window.viewer.right.outline_item.path().isEmpty()
    outline = window.viewer.left.outline_item.path().boundingRect()
    assert outline.right() <= 205 and outline.left() <= 5        # the left half, in image pixels
    window.actions_by_id["lung_outline"].setChecked(False)
    assert window.viewer.right.outline_item.path().isEmpty()
    # only inside the lungs: the right half of the heatmap becomes transparent
    window.heatmap_controls.lungs_only.setChecked(True)
    heat = window.viewer.right.heat_item.pixmap().toImage()
    assert heat.pixelColor(heat.width() - 5, heat.height() // 2).alpha() == 0
    assert heat.pixelColor(5, heat.height() // 2).alpha() == 255
    assert "inside lungs only" in window.viewer.right_title.text()


def test_not_a_chest_xray_warning(qtbot, window, tmp_path):
    path = write_png(tmp_path / "white.png", np.full((300, 300), 250, np.uint8))   # the fake flags it as OOD
    open_with_fake(qtbot, window, path)
    wait_shown(qtbot, window)
    assert window.prediction.ood.isVisible() and "Not a chest X-ray?" in window.prediction.ood.text()
    assert window.folder_panel.model.items[0].row.ood_flag


def test_spinner_while_computing_then_result(qtbot, window, folder):
    open_with_fake(qtbot, window, folder, delay=0.4)
    qtbot.waitUntil(lambda: "Computing Grad-CAM" in window.prediction.status.text(), timeout=5000)
    assert window.prediction.spinner.running
    wait_shown(qtbot, window)
    assert not window.prediction.spinner.running


def test_window_level_sliders_and_model_menu_and_dialogs(qtbot, window, folder, monkeypatch):
    from xrayviewer.model.bundle import list_bundles
    from xrayviewer.paths import SHIPPED_MODELS_DIR, user_models_dir
    from xrayviewer.ui import dialogs

    open_with_fake(qtbot, window, folder)
    wait_shown(qtbot, window)
    window.display_controls.width.setValue(40)
    window.display_controls.level.setValue(30)
    assert window.viewer.state.width == pytest.approx(0.4) and window.viewer.state.center == pytest.approx(0.3)
    # Model › Use model lists the shipped and the user's bundles; choosing one loads it
    chosen = []
    monkeypatch.setattr(window, "use_model", lambda p: chosen.append(p))
    window._fill_models_menu()
    entries = [a for a in window.models_menu.actions() if a.isEnabled()]
    assert len(entries) == len(list_bundles(SHIPPED_MODELS_DIR, user_models_dir()))
    if entries:
        entries[0].trigger()
        assert chosen
    window._fill_recent_menu()
    assert window.recent_menu.actions()[0].text() == str(folder.resolve())
    assert "TensorFlow" in dialogs.about_text() and DISCLAIMER in dialogs.about_text()
    assert DISCLAIMER in dialogs.DISCLAIMER_TEXT
    card = folder.parent / "bundle"
    card.mkdir()
    (card / "MODEL_CARD.md").write_text("# My model\n\nTrained on *things*.")
    dialog = dialogs.model_card_dialog(card, window)
    assert "Trained on" in dialog.browser.toPlainText()
    dialog.close()


def test_gui_stays_responsive_on_a_synthetic_folder(qtbot, window, tmp_path):
    """Synthetic twin of the real responsiveness test: large images (2400 px: display work on the GUI thread is
    the risk), a slow fake model, navigation; a 10 ms timer never waits more than 150 ms."""
    root = tmp_path / "big"
    for i in range(6):
        write_png(root / ("covid" if i % 2 else "normal") / f"img{i}.png",
                  marker_image((2400, 2000), (300 + 250 * i, 900), radius=40, seed=i))
    heartbeat = Heartbeat()
    open_with_fake(qtbot, window, root, delay=0.1)
    wait_shown(qtbot, window)
    for _ in range(3):
        qtbot.keyClick(window.folder_panel.list, Qt.Key.Key_Right)
        qtbot.wait(50)
    wait_shown(qtbot, window, timeout=20_000)
    window.viewer.set_window(0.4, 0.5)      # a window/level change re-renders the 2400 px image
    qtbot.waitUntil(lambda: all(it.row is not None for it in window.folder_panel.model.items), timeout=30_000)
    heartbeat.timer.stop()
    gaps = [1000 * gap for gap in heartbeat.gaps]     # ms
    assert len(gaps) > 20
    assert max(gaps[1:]) < 150, f"GUI blocked {max(gaps[1:])} ms"


def test_pixel_readout_under_the_pointer(qtbot, window, tmp_path):
    shape, marker = (400, 300), (100, 200)
    path = write_png(tmp_path / "m" / "marker.png", marker_image(shape, marker, radius=20))
    open_with_fake(qtbot, window, path)
    wait_shown(qtbot, window)
    canvas = window.viewer.right
    spot = canvas.mapFromScene(QPointF(marker[1] + 0.5, marker[0] + 0.5))
    qtbot.mouseMove(canvas.viewport(), spot)
    qtbot.waitUntil(lambda: window.pixel_label.text().startswith(f"x {marker[1]}  y {marker[0]}"), timeout=2000)
    text = window.pixel_label.text()
    pixel = float(text.split("pixel ")[1].split()[0])
    heat = float(text.split("heat ")[1].split()[0])
    assert pixel > 0.9 and heat > 0.7          # the bright marker is where the heat is
