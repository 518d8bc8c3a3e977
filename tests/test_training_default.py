"""The shipped default model: a valid small bundle whose model.json and card carry the honest figures, and which
reproduces its recorded validation accuracy on the real images (../shared)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xrayviewer.paths import DEFAULT_MODEL_DIR


@pytest.fixture(scope="module")
def bundle():
    from xrayviewer.model.bundle import load_bundle

    return load_bundle(DEFAULT_MODEL_DIR)


def test_default_bundle_is_small_head_only_and_complete(bundle):
    assert bundle.classes == ["covid", "normal", "pneumonia"]
    assert bundle.weights_scope == "head" and bundle.base_id == "vgg16-hed-block4"
    assert bundle.gradcam_layer == "block4_conv3"
    assert sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()) < 5_000_000
    meta = bundle.meta
    training = meta["training"]
    assert training["patient_id_origin"] == "manifest" and training["split"]["by"] == "manifest"
    assert training["hyperparameters"]["seed"] == 42
    metrics = meta["metrics"]
    for key in ("validation", "validation_uncalibrated", "validation_per_source", "validation_within_source",
                "cv_selection", "cv_floor"):
        assert key in metrics, key
    assert set(metrics["validation_within_source"]) == {"covid vs normal", "NIH pneumonia vs normal",
                                                        "ieee8023 covid vs pneumonia"}
    assert 0 < bundle.temperature < 10
    for png in ("plot.png", "confusion.png", "roc.png", "reliability.png"):
        assert (DEFAULT_MODEL_DIR / png).read_bytes()[:4] == b"\x89PNG"


def test_model_card_has_the_required_sections(bundle):
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text(encoding="utf-8")
    for words in ("Research use only", "## Data", "licence", "patient-disjoint", "### Per source",
                  "### Within source", "NIH pneumonia vs normal", "ieee8023 covid vs pneumonia", "## Calibration",
                  "before", "after", "## Known shortcut risks", "children", "## Shortcut audit"):
        assert words in card, words
    assert f"{bundle.meta['metrics']['validation']['accuracy']:.3f}" in card


@pytest.mark.shared
def test_default_model_reproduces_its_validation_accuracy(bundle, shared_data):
    """Features -> the bundle's own head weights -> the accuracy model.json records, on the recorded split."""
    from xrayviewer.imaging import file_sha256
    from xrayviewer.model.architecture import build_head_model
    from xrayviewer.training.engine import head_logits
    from xrayviewer.training.features import FeatureExtractor, FeatureSource
    from xrayviewer.training.metrics import classification_metrics, softmax

    split = bundle.meta["training"]["split"]["validation"]
    root = shared_data / "cxr"
    paths = [root / p for p in split["paths"]]
    assert [file_sha256(p) for p in paths] == split["sha256"]          # the data did not change under the model
    labels = [bundle.classes.index(p.split("/")[0]) for p in split["paths"]]
    features = FeatureExtractor(bundle.base_id, input_size=bundle.input_size).extract(
        [FeatureSource(str(p), s) for p, s in zip(paths, split["sha256"])], 1)[:, 0]
    head = build_head_model(features.shape[1], 3, bundle.head)
    head.load_weights(str(bundle.weights_path))
    metrics = classification_metrics(labels, softmax(head_logits(head, features), bundle.temperature),
                                     bundle.classes)
    recorded = bundle.meta["metrics"]["validation"]
    assert metrics["accuracy"] == pytest.approx(recorded["accuracy"], abs=1.5 / len(labels))
    assert metrics["macro_auc"] == pytest.approx(recorded["macro_auc"], abs=0.01)
    assert json.dumps(metrics) and np.isfinite(metrics["ece"])
