"""Fakes for the viewer's tests: a classifier with the real Classifier's surface, and synthetic radiographs.

The fake's Grad-CAM is the image itself on a 14x14 grid, so its heatmap is hot exactly where the image is bright:
a synthetic image with one bright marker gives a heatmap whose peak must land on that marker.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
from PySide6.QtCore import QObject, QTimer

from xrayviewer.model.classifier import Analysis
from xrayviewer.model.explain import Explanation, upsample_cam

CLASSES = ["covid", "normal", "pneumonia"]


class Heartbeat(QObject):
    """Ticks every 10 ms on the GUI thread and records the gaps between ticks (seconds): the longest is how long
    the GUI thread was blocked."""

    def __init__(self):
        super().__init__()
        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self.timer = QTimer(self)
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    @property
    def longest(self) -> float:
        return max(self.gaps, default=0.0)


class FakeBundle:
    def __init__(self, path: Path | None = None, classes=CLASSES):
        self.name, self.version, self.path = "fake-model", "0.1", Path(path or "/nonexistent/fake-model")
        self.classes = list(classes)
        self.meta = {"name": self.name, "version": self.version, "classes": self.classes}


class FakeAnalysis(Analysis):
    """The real Analysis (same properties and heatmap) filled from the fake's pass."""

    def __init__(self, classes, probabilities, cams, shape, ood_flag=False):
        super().__init__(classes, probabilities, np.log(probabilities), cams, np.zeros(8, np.float32), shape,
                         ood_score=3.0 if ood_flag else 0.5, ood_flag=ood_flag)


class FakeClassifier:
    """Same attributes as xrayviewer.model.classifier.Classifier; `delay` seconds per analysis mimics TensorFlow."""

    def __init__(self, delay: float = 0.0, classes=CLASSES, path: Path | None = None):
        self.classes = list(classes)
        self.bundle = FakeBundle(path, classes)
        self.delay = delay
        self.calls = 0
        self.analyzed: list[str] = []      # radiograph paths, in order
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def analyze(self, radiograph):
        with self._lock:
            self.calls += 1
            self.analyzed.append(radiograph.path)
            self.threads.add(threading.current_thread().name)
            if self.delay:
                time.sleep(self.delay)
            grid = cv2.resize(radiograph.pixels, (14, 14), interpolation=cv2.INTER_AREA)
            grid = np.maximum(grid - float(np.median(grid)), 0)
            mean = float(radiograph.pixels.mean())
            # deterministic probabilities from the image: brighter images lean to class 0
            logits = np.array([mean * 6, 1.0, (1 - mean) * 2][:len(self.classes)], np.float64)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            cams = np.stack([grid if i == 0 else grid[::-1, ::-1] for i in range(len(self.classes))])
            return FakeAnalysis(self.classes, probs.astype(np.float32), cams.astype(np.float32),
                                radiograph.shape, ood_flag=mean > 0.9)

    def explain(self, radiograph, method="gradcam", class_index=None):
        analysis = self.analyze(radiograph)
        index = analysis.predicted_index if class_index is None else int(class_index)
        raw = analysis.cams[index] if method == "gradcam" else np.sqrt(analysis.cams[index])
        return Explanation(raw, upsample_cam(raw, radiograph.shape), index, method)


def marker_image(shape=(600, 500), marker=(150, 360), radius=18, seed=0) -> np.ndarray:
    """uint8 chest-like background (smooth, dim) with one bright disc at marker=(row, col)."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    base = 60 + 30 * np.exp(-(((xx - cols / 2) / (cols / 3)) ** 2)) + rng.normal(0, 3, shape)
    base[(yy - marker[0]) ** 2 + (xx - marker[1]) ** 2 <= radius ** 2] = 250
    return np.clip(base, 0, 255).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def synthetic_folder(root: Path, n_per_class: int = 3, classes=("covid", "normal")) -> list[Path]:
    """Folder-per-class synthetic radiographs, each with its marker somewhere else, plus nothing unreadable."""
    paths = []
    k = 0
    for label in classes:
        for i in range(n_per_class):
            marker = (80 + (k * 37) % 400, 60 + (k * 53) % 380)
            paths.append(write_png(root / label / f"{label}_{i:02d}.png",
                                   marker_image((520 + 10 * k, 480), marker, seed=k)))
            k += 1
    return paths


class FakeSegmenter:
    """Same surface as xrayviewer.model.lungs.LungSegmenter: the "lungs" are the left half of the image."""

    def segment(self, radiograph):
        mask = np.zeros(radiograph.shape, bool)
        mask[:, : radiograph.shape[1] // 2] = True
        return mask


def wait_shown(qtbot, win, path=None, timeout=10_000):
    """Until the current (or given) image's prediction and heatmap are on screen, all of the same file."""
    def shown():
        ex, cur = win.viewer.explained, win.current_path()
        assert cur is not None and ex is not None and win.viewer.image is not None
        assert ex.path == str(cur) == win.viewer.image.path
        if path is not None:
            assert Path(ex.path) == Path(path).resolve()
        assert not win.viewer.right.heat_item.pixmap().isNull()
    qtbot.waitUntil(shown, timeout=timeout)
    return win.viewer.explained
