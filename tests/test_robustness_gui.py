"""The real window against hostile folders, a frantic user and broken model files (offscreen, pytest-qt).

The model is a real Classifier (TensorFlow) on the tiny small-cnn bundle, loaded once per module: what is tested is
the window's behaviour around any model, not the model. For the rapid-navigation test it answers with a seeded random
delay, so results come back out of order the way they do with a busy VGG16.

- A folder with the whole bad-input corpus (tests/badinputs.py) mixed with real radiographs from ../shared (and a
  synthetic twin): no crash, every bad file shows its message (badge tooltip and prediction panel), every good file
  gets a prediction.
- 200 image switches in 5 s: after every switch and at the end the image, the prediction and the heatmap on screen
  belong to the same file, and to *that* file's content; no worker or thread is left running afterwards.
- Broken model bundles and a Lambda `.keras` given to MainWindow.use_model: each refused with its message, the window
  keeps the model it had and goes on predicting with it.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

import badinputs
from robustness_support import real_sample, save_tiny_bundle, write_synthetic_images

SWITCHES = 200
SWITCH_SECONDS = 5.0


# ---------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    return save_tiny_bundle(tmp_path_factory.mktemp("models") / "tiny", classes=("covid", "normal", "pneumonia"))


@pytest.fixture(scope="module")
def loaded(tiny_bundle):
    """One real Classifier for the module (plus the lung segmenter when models/lungs exists)."""
    from xrayviewer.ui.jobs import load_classifier

    return load_classifier(str(tiny_bundle))


def test_loading_a_model_measures_this_machines_speed(loaded):
    """The warm-up at load times one pass after the tracing one: the audit's estimate needs no image viewed first."""
    seconds = loaded.classifier.seconds_per_analysis
    assert seconds is not None and 0 < seconds < 30


@pytest.fixture
def window(main_window):
    return main_window


def use(win, loaded, classifier=None) -> None:
    win.model_service.set_classifier(classifier or loaded.classifier, loaded.segmenter, loaded.path)


def items_by_path(win) -> dict[str, object]:
    return {item.path: item for item in win.folder_panel.model.items}


def heatmap_shown(win, path) -> bool:
    ex, image, cur = win.viewer.explained, win.viewer.image, win.current_path()
    return (ex is not None and image is not None and cur is not None and ex.path == str(cur) == image.path
            == str(path) and not win.viewer.right.heat_item.pixmap().isNull())


def settle(qtbot, win, timeout=60_000) -> None:
    from xrayviewer.ui.workers import active_workers

    qtbot.waitUntil(lambda: not active_workers() and win.session.background_remaining == 0, timeout=timeout)


# ------------------------------------------------------------------------------- bad inputs mixed with good ones

def _mixed_folder(root: Path, good: list[Path]) -> tuple[Path, dict, list[Path]]:
    folder = root / "mixed"
    corpus = badinputs.make_bad_input_corpus(folder / "bad")
    good_dir = folder / "good"
    good_dir.mkdir(parents=True)
    copies = []
    for src in good:
        dest = good_dir / src.name
        shutil.copyfile(src, dest)
        copies.append(dest.resolve())
    return folder, corpus, copies


def _plain(text: str) -> str:
    """Label text without HTML markup or entities."""
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", " ", text))


def _check_mixed_folder(qtbot, win, loaded, folder: Path, corpus: dict, good: list[Path]) -> None:
    use(win, loaded)
    with qtbot.waitSignal(win.folderScanned, timeout=30_000):
        win.open_path(folder)
    items = items_by_path(win)
    # Every file gets a badge: a prediction or an error (the badge pass and thumbnails run in the background).
    qtbot.waitUntil(lambda: all(it.row is not None and (it.row.predicted or it.row.error)
                                for it in win.folder_panel.model.items), timeout=120_000)
    classes = list(loaded.classifier.classes)
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    listed_bad, problems = [], []
    for name, (path, expected) in corpus.items():
        key = str(Path(path).absolute())
        item = items.get(key) or items.get(str(Path(path).resolve()))
        if expected is None:
            if item is None or not (item.row.predicted in classes and not item.row.error):
                problems.append(f"good corpus file {name} got no prediction: {item and item.row}")
            continue
        if item is None:  # the scan skipped it (a folder named x.png is not a file to list)
            assert name in ("directory_named_png",), f"bad file {name} is not in the list at all"
            continue
        if name == "no_read_permission" and as_root:  # root reads it anyway (chmod does not stop root)
            continue
        listed_bad.append((name, item))
        message = item.row.error
        keywords = badinputs.CORPUS_KEYWORDS.get(name, ())
        if not message:
            problems.append(f"{name}: no error badge (row {item.row})")
        elif not any(k.lower() in message.lower() for k in keywords):
            problems.append(f"{name}: message {message!r} names none of {keywords}")
        tooltip = win.folder_panel.model.data(win.folder_panel.model.index(win.folder_panel.model.row_of(item.path)),
                                              Qt.ItemDataRole.ToolTipRole)
        if message and message not in (tooltip or ""):
            problems.append(f"{name}: the tooltip does not show the message ({tooltip!r})")
    for path in good:
        item = items.get(str(path))
        if item is None or item.row.error or item.row.predicted not in classes:
            problems.append(f"real image {path.name} got no prediction: {item and item.row}")
    assert not problems, "\n".join(problems)
    assert len(listed_bad) >= 10

    # Select every bad file in turn: the prediction panel says why, the window goes on.
    for name, item in listed_bad:
        assert win.select_path(item.path), name
        shown = lambda: win.prediction.error.isVisible() and _plain(item.row.error)[:40] in _plain(  # noqa: E731
            win.prediction.error.text())
        try:
            qtbot.waitUntil(shown, timeout=20_000)
        except Exception:
            raise AssertionError(f"{name}: the prediction panel does not show {item.row.error!r} "
                                 f"(it shows {win.prediction.error.text()!r}, "
                                 f"visible={win.prediction.error.isVisible()})") from None
        assert "Traceback" not in win.prediction.error.text()
    # ...and the good ones still show their prediction and heatmap afterwards.
    for path in good[:3]:
        win.select_path(path)
        qtbot.waitUntil(lambda: heatmap_shown(win, path), timeout=30_000)
    assert win.isVisible()


def test_bad_corpus_mixed_with_synthetic_images(qtbot, window, loaded, tmp_path):
    good = write_synthetic_images(tmp_path / "src", 6)
    folder, corpus, copies = _mixed_folder(tmp_path, good)
    _check_mixed_folder(qtbot, window, loaded, folder, corpus, copies)


@pytest.mark.shared
def test_bad_corpus_mixed_with_real_images(qtbot, window, loaded, shared_data, tmp_path):
    good = real_sample(shared_data, 6, formats=("PNG", "JPEG", "DICOM"))
    folder, corpus, copies = _mixed_folder(tmp_path, good)
    _check_mixed_folder(qtbot, window, loaded, folder, corpus, copies)


# --------------------------------------------------------------------------------------------- rapid navigation

class JitteryClassifier:
    """The real classifier, answering after a seeded random delay (0–60 ms) so results overtake each other."""

    def __init__(self, inner, seed: int = 0):
        self._inner, self._rng, self._lock = inner, random.Random(seed), threading.Lock()
        self.classes, self.bundle = inner.classes, inner.bundle

    def _pause(self) -> None:
        with self._lock:
            delay = self._rng.uniform(0, 0.06)
        time.sleep(delay)

    def analyze(self, radiograph):
        self._pause()
        return self._inner.analyze(radiograph)

    def explain(self, radiograph, method="gradcam", class_index=None):
        self._pause()
        return self._inner.explain(radiograph, method=method, class_index=class_index)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _on_screen_consistent(win) -> str | None:
    """None when what is on screen belongs together, else what does not."""
    cur = win.current_path()
    image, ex = win.viewer.image, win.viewer.explained
    # The previous image may stay on screen (bare: no prediction, no heatmap) while the selected one is read.
    if ex is not None:
        if cur is None or ex.path != str(cur):
            return f"heatmap of {ex.path} shown while {cur} is selected"
        if image is None or image.path != ex.path or image.sha256 != ex.sha256:
            return f"heatmap computed for other content than the image shown ({cur})"
        bars = win.prediction.bars.probabilities
        expected = [ex.row.probabilities[c] for c in ex.row.probabilities]
        if bars is not None and not np.allclose(bars, expected):
            return f"prediction bars {bars} are not the shown heatmap's prediction {expected}"
    elif win.prediction.bars.probabilities is not None:
        return f"prediction bars shown without a heatmap for {cur}"
    return None


def _rapid_navigation(qtbot, win, loaded, paths: list[Path], min_shown: int) -> None:
    """`min_shown`: heatmaps that must reach the screen during the switching, so the checks are not vacuous (large
    real images take longer to read than a switch lasts, and stale requests are rightly dropped)."""
    from xrayviewer.imaging import read_radiograph
    from xrayviewer.ui.jobs import display_shape
    from xrayviewer.ui.workers import active_workers

    use(win, loaded, JitteryClassifier(loaded.classifier, seed=8))
    win.open_path(paths[0].parent, select=paths[0])
    qtbot.waitUntil(lambda: heatmap_shown(win, paths[0]), timeout=60_000)
    settle(qtbot, win)
    threads_before = threading.active_count()

    mismatches: list[str] = []
    completes: list[str] = []
    win.displayComplete.connect(lambda p: completes.append(p) if str(win.current_path()) == p
                                else mismatches.append(f"displayComplete({p}) while {win.current_path()} selected"))
    rng = random.Random(2026)
    keys = [Qt.Key.Key_Right] * 5 + [Qt.Key.Key_Left] * 3 + [Qt.Key.Key_J, Qt.Key.Key_K, Qt.Key.Key_Home,
                                                               Qt.Key.Key_End]
    start = time.perf_counter()
    for i in range(SWITCHES):
        if rng.random() < 0.25:
            win.select_path(rng.choice(paths))
        else:
            QTest.keyClick(win, rng.choice(keys))
        # Results land between switches: let the event loop deliver what has arrived, then look at the screen.
        deadline = start + SWITCH_SECONDS * (i + 1) / SWITCHES
        while True:
            QApplication.processEvents()
            problem = _on_screen_consistent(win)
            if problem:
                mismatches.append(f"after switch {i}: {problem}")
            if time.perf_counter() >= deadline:
                break
            time.sleep(0.002)
    elapsed = time.perf_counter() - start
    # Paced at 200 in 5 s; a loaded CI machine slips (timing belongs to benchmarks/), a hang does not pass.
    print(f"{SWITCHES} switches in {elapsed:.1f} s")
    assert elapsed < 60, f"{SWITCHES} switches took {elapsed:.1f} s: the GUI thread hung"

    final = win.current_path()
    qtbot.waitUntil(lambda: heatmap_shown(win, final), timeout=60_000)
    assert not mismatches, "\n".join(mismatches[:10])
    assert len(completes) >= min_shown, f"only {len(completes)} heatmaps reached the screen: the checks saw too little"
    assert _on_screen_consistent(win) is None
    # The prediction and heatmap on screen are those of the file's content, not just labelled with its path.
    ex = win.viewer.explained
    truth = loaded.classifier.analyze(read_radiograph(final))
    assert np.allclose(ex.analysis.probabilities, truth.probabilities, atol=1e-5)
    assert np.allclose(win.prediction.bars.probabilities, truth.probabilities, atol=1e-4)
    assert np.allclose(ex.heatmap, truth.heatmap(ex.class_index, display_shape(truth_shape(final))), atol=1e-3)

    # No leaks: every worker finishes, and the thread count comes back.
    settle(qtbot, win)
    assert active_workers() == []
    qtbot.waitUntil(lambda: threading.active_count() <= threads_before + 2, timeout=10_000)
    # ...and finished workers let go of their images: only the bounded image cache (and the screen) holds any.
    import gc

    from xrayviewer.ui.workers import Worker

    gc.collect()
    images = sum(1 for o in gc.get_objects() if type(o).__name__ == "LoadedImage")
    assert images <= win.session.caches.images.max_items + 2, f"{images} decoded images still referenced"
    holding = [w for w in gc.get_objects() if isinstance(w, Worker) and w.done.is_set() and w.args]
    assert not holding, f"{len(holding)} finished workers still hold their arguments"
    # ...and are freed themselves: only each slot's last worker (read, explain, prefetch, model load, colormap warm-up,
    # folder scan, thumbnails) is still referenced, not several per switch (PySide's pool kept every one).
    qtbot.waitUntil(lambda: len([w for w in gc.get_objects() if isinstance(w, Worker)]) <= 12, timeout=5_000)


def truth_shape(path: Path) -> tuple[int, int]:
    from xrayviewer.imaging import read_radiograph

    return read_radiograph(path).shape


def test_rapid_navigation_on_synthetic_images(qtbot, window, loaded, tmp_path):
    paths = [p.resolve() for p in write_synthetic_images(tmp_path / "cases", 24, shape=(300, 260))]
    _rapid_navigation(qtbot, window, loaded, paths, min_shown=10)


@pytest.mark.shared
def test_rapid_navigation_on_real_images(qtbot, window, loaded, shared_data, tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    paths = []
    for src in real_sample(shared_data, 24, formats=("PNG", "JPEG", "DICOM")):
        paths.append((folder / src.name).resolve())
        shutil.copyfile(src, paths[-1])
    _rapid_navigation(qtbot, window, loaded, sorted(paths, key=lambda p: p.name), min_shown=2)


# ------------------------------------------------------------------------------------ broken models in the window

def _broken_bundles(good: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, words the refusal must contain)."""
    import json

    def copy(name: str) -> Path:
        return Path(shutil.copytree(good, root / name))

    def edit(path: Path, change) -> Path:
        meta = json.loads((path / "model.json").read_text())
        change(meta)
        (path / "model.json").write_text(json.dumps(meta))
        return path

    out = {}
    out["wrong hash"] = (edit(copy("wrong-hash"), lambda m: m["weights"].update(sha256="0" * 64)), "damaged")
    truncated = copy("truncated")
    weights = truncated / json.loads((truncated / "model.json").read_text())["weights"]["file"]
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    out["truncated weights"] = (truncated, "damaged")
    out["unknown format"] = (edit(copy("future"), lambda m: m.update(format_version=7)), "newer XRayViewer")
    out["not a bundle"] = (root / "empty-folder", "model.json")
    (root / "empty-folder").mkdir()
    return out


def _lambda_keras(path: Path) -> Path:
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    model.save(path)
    return path


def test_use_model_refuses_broken_models_and_keeps_the_one_it_had(qtbot, window, loaded, tiny_bundle, tmp_path):
    paths = [p.resolve() for p in write_synthetic_images(tmp_path / "cases", 4)]
    window.use_model(tiny_bundle)
    qtbot.waitUntil(lambda: window.model_service.classifier is not None, timeout=60_000)
    kept = window.model_service.classifier
    window.open_path(paths[0].parent, select=paths[0])
    qtbot.waitUntil(lambda: heatmap_shown(window, paths[0]), timeout=30_000)

    cases = _broken_bundles(tiny_bundle, tmp_path / "broken")
    cases["Lambda .keras"] = (_lambda_keras(tmp_path / "sneaky.keras"), "")
    for step, (name, (path, words)) in enumerate(cases.items(), start=1):
        failures: list[tuple[str, str]] = []
        window.model_service.loadFailed.connect(lambda p, m: failures.append((p, m)))
        window.use_model(path)
        qtbot.waitUntil(lambda: bool(failures), timeout=60_000)
        message = failures[0][1]
        assert words.lower() in message.lower(), f"{name}: {message!r}"
        assert "Traceback" not in message and "File \"" not in message, f"{name}: {message}"
        assert window.model_service.classifier is kept, f"{name}: the window dropped its model"
        assert message[:60] in window.statusBar().currentMessage() or \
            message[:60] in window.prediction.error.text(), f"{name}: the message is not shown"
        window.model_service.loadFailed.disconnect()
        # The kept model goes on working: the next image gets its prediction and heatmap.
        target = paths[step % len(paths)]
        window.select_path(target)
        qtbot.waitUntil(lambda: heatmap_shown(window, target), timeout=30_000)
        assert window.viewer.explained.model_key == window.model_service.model_key


# ------------------------------------------------------------------------------- PySide6 refcount bug (guarded)

_MANY_QT_CALLS = r"""
import sys
import xrayviewer.ui  # noqa: F401  (the guard lives here)
from PySide6.QtCore import QCoreApplication, QObject, Signal

app = QCoreApplication([])

class Emitter(QObject):
    ping = Signal(object)

emitter = Emitter()
none_before, true_before = sys.getrefcount(None), sys.getrefcount(True)
for _ in range(100_000):   # far more references than None or True hold in a fresh process
    emitter.ping.emit(None)
    app.processEvents()
print(none_before - sys.getrefcount(None), true_before - sys.getrefcount(True))
"""


def test_qt_calls_do_not_exhaust_none_or_true():
    """100 000 emits and processEvents() in a fresh process (where None and True hold a few thousand references):
    without the guard in xrayviewer/ui/__init__.py PySide6 6.12 on CPython 3.11 aborts the process."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _MANY_QT_CALLS], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0, f"the process died: {proc.stderr[-800:]}"
    assert "dealloc" not in proc.stderr
