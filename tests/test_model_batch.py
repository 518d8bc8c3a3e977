"""classify_paths: rows in input order across batches, error rows, ground truth, lung attention, progress, cancel."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from xrayviewer.model.batch import analyze_paths, classify_paths
from xrayviewer.model.classifier import Classifier

CLASSES = ["normal", "pneumonia"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Classifier:
    import keras

    from xrayviewer.model.architecture import build_classifier
    from xrayviewer.model.bundle import save_bundle

    keras.utils.set_random_seed(2)
    model = build_classifier("vgg16-hed-block4", len(CLASSES), None, (64, 64))
    return Classifier.load(save_bundle(tmp_path_factory.mktemp("models") / "m", {"classes": CLASSES}, model))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """good, good, text, good, empty, good, good (7 files: batches of 2 mix errors and images)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for i, kind in enumerate(["good", "good", "text", "good", "empty", "good", "good"]):
        path = root / f"f{i}.png"
        if kind == "good":
            cv2.imwrite(str(path), (rng.random((80 + 10 * i, 70)) * 255).astype(np.uint8))
        elif kind == "text":
            path.write_text("hello")
        else:
            path.write_bytes(b"")
        out.append(path)
    return out


def test_rows_in_order_with_errors_and_same_probabilities_as_predict(classifier, files):
    from xrayviewer.imaging import read_radiograph

    rows = list(classify_paths(classifier, files, batch_size=2))
    assert [r.path for r in rows] == [str(p) for p in files]
    assert [bool(r.error) for r in rows] == [False, False, True, False, True, False, False]
    good = [p for p, r in zip(files, rows) if not r.error]
    expected = classifier.predict([read_radiograph(p) for p in good])
    got = np.array([[r.probabilities[c] for c in CLASSES] for r in rows if not r.error])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert all(r.predicted in CLASSES for r in rows if not r.error)
    assert all(r.predicted == "" and not r.probabilities for r in rows if r.error)


def test_ground_truth_mapping_and_function(classifier, files):
    truth = {str(files[0]): "normal", str(files[1]): "pneumonia"}
    rows = list(classify_paths(classifier, files[:2], ground_truth=truth))
    assert [r.ground_truth for r in rows] == ["normal", "pneumonia"]
    assert [r.correct for r in rows] == [r.predicted == r.ground_truth for r in rows]
    rows = list(classify_paths(classifier, files[:1], ground_truth=lambda p: "normal"))
    assert rows[0].ground_truth == "normal"


class HalfLungs:
    """Stand-in segmenter: the left half of every image is 'lung'."""

    def segment(self, radiograph):
        mask = np.zeros(radiograph.shape, bool)
        mask[:, : radiograph.shape[1] // 2] = True
        return mask


def test_lung_attention_filled_from_the_heatmap(classifier, files):
    from xrayviewer.imaging import read_radiograph

    lung_attention = pytest.importorskip("xrayviewer.model.lungs").lung_attention
    rows = list(classify_paths(classifier, files[:3], lungs=HalfLungs()))
    assert rows[2].error and rows[2].lung_attention is None
    radiograph = read_radiograph(files[0])
    analysis = classifier.analyze(radiograph)
    expected = lung_attention(analysis.heatmap(), HalfLungs().segment(radiograph))
    assert rows[0].lung_attention == pytest.approx(expected, abs=1e-5)
    assert 0.0 <= rows[1].lung_attention <= 1.0


def test_progress_events_and_cancel(classifier, files):
    events = []
    cancel = threading.Event()

    def progress(event):
        events.append(event)
        if event["done"] == 2:
            cancel.set()

    rows = list(classify_paths(classifier, files, progress=progress, cancel=cancel, batch_size=2))
    assert len(rows) == 2 and [e["done"] for e in events] == [1, 2]
    assert events[0] == {"kind": "classify", "done": 1, "total": len(files), "path": str(files[0])}


def test_generator_input_and_kept_radiographs(classifier, files):
    items = list(analyze_paths(classifier, (p for p in files[:2]), cams=True, keep_radiographs=True))
    assert all(i.radiograph is not None and i.analysis.cams is not None for i in items)
    assert items[0].analysis.original_shape == items[0].radiograph.shape
