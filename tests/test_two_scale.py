"""The two-stage, two-scale classifier (the shipped model's kind): its probabilities are the two stages' product,
its bundle round-trips, its all-class Grad-CAM on two grids equals tf-keras-vis's, and it refuses another lung model.

Synthetic images at a small input size, so these run without ../shared (test_training_default checks the shipped
model itself on the real images)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from xrayviewer.imaging.radiograph import Radiograph

CLASSES = ["covid", "normal", "pneumonia"]
SIZE = (96, 96)
BRANCH = (64, 64)


def _radiographs(n: int = 3) -> list[Radiograph]:
    rng = np.random.default_rng(7)
    out = []
    for k in range(n):
        yy, xx = np.mgrid[0:160, 0:140] / 160.0
        chest = 0.5 + 0.3 * np.sin(3 * xx + k) * np.cos(2 * yy) + 0.05 * rng.normal(size=xx.shape)
        for cx in (0.3, 0.62):     # two dark "lung fields"
            chest -= 0.35 * np.exp(-(((xx - cx) / 0.13) ** 2 + ((yy - 0.5) / 0.25) ** 2))
        out.append(Radiograph(np.clip(chest, 0, 1).astype(np.float32), {}))
    return out


@pytest.fixture(scope="module")
def head():
    from xrayviewer.model.lungs import read_lung_meta
    from xrayviewer.model.two_scale import make_head
    from xrayviewer.paths import LUNG_MODEL_DIR

    return make_head(branch_size=BRANCH, lung_weights_sha256=read_lung_meta(LUNG_MODEL_DIR)["weights"]["sha256"])


@pytest.fixture(scope="module")
def model(head):
    from xrayviewer.model.two_scale import build_two_scale_classifier, set_stage

    model = build_two_scale_classifier(CLASSES, head, SIZE)
    rng = np.random.default_rng(0)
    set_stage(model, "stage_abnormal", rng.normal(0, 0.02, 512), 0.4)
    set_stage(model, "stage_covid", rng.normal(0, 0.02, 512), -0.3)
    return model


@pytest.fixture(scope="module")
def saved(model, head, tmp_path_factory):
    from xrayviewer.model.bundle import save_bundle

    return save_bundle(tmp_path_factory.mktemp("bundles") / "two-stage",
                       {"name": "two-stage test", "classes": CLASSES, "head": head}, model)


def _inputs(radiographs):
    from xrayviewer.imaging.preprocess import to_model_batch

    return to_model_batch(radiographs, SIZE)


def test_area_resize_is_cv2_area_and_differentiable():
    import tensorflow as tf

    from xrayviewer.model.two_scale import _layers, area_matrix

    assert np.allclose(area_matrix(336, 224).sum(axis=1), 1.0)
    x = np.random.default_rng(1).normal(size=(2, 96, 96, 3)).astype(np.float32)
    layer = _layers()["AreaResize"](BRANCH)
    y = layer(x).numpy()
    assert np.abs(y[0] - cv2.resize(x[0], BRANCH[::-1], interpolation=cv2.INTER_AREA)).max() < 1e-5
    assert np.abs(y - tf.image.resize(x, BRANCH, method="area").numpy()).max() < 1e-5
    xt = tf.constant(x)
    with tf.GradientTape() as tape:   # TensorFlow's own area resize has no gradient; Grad-CAM needs one here
        tape.watch(xt)
        total = tf.reduce_sum(layer(xt))
    assert tape.gradient(total, xt) is not None


def test_probabilities_are_the_two_stages(model):
    from xrayviewer.model.two_scale import feature_model

    x = _inputs(_radiographs())
    pooled, lung_mean = (np.asarray(t) for t in feature_model(model)(x, training=False))
    w_a, b_a = model.get_layer("stage_abnormal").get_weights()
    w_b, b_b = model.get_layer("stage_covid").get_weights()
    a = 1 / (1 + np.exp(-(pooled @ w_a + b_a)[:, 0]))
    b = 1 / (1 + np.exp(-(lung_mean @ w_b + b_b)[:, 0]))
    probs = np.asarray(model(x, training=False))
    assert np.allclose(probs, np.stack([a * b, 1 - a, a * (1 - b)], axis=1), atol=1e-5)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_bundle_round_trip_and_gradcam_on_both_grids_equals_tf_keras_vis(saved, model):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import CategoricalScore

    from xrayviewer.model.bundle import load_bundle
    from xrayviewer.model.classifier import Classifier
    from xrayviewer.model.explain import add_maps

    meta = json.loads((saved / "model.json").read_text())
    assert meta["head"]["kind"] == "two-stage-lungs" and meta["weights"]["scope"] == "head"
    assert meta["format_version"] == 2      # an app that reads only format 1 refuses it as "newer"
    assert meta["gradcam_extra_layers"] == ["s224_block4_conv3"]
    bundle = load_bundle(saved)
    assert bundle.gradcam_layers == ["block4_conv3", "s224_block4_conv3"]
    classifier = Classifier(bundle, bundle.build_keras_model())
    radiographs = _radiographs()
    assert np.allclose(classifier.predict(radiographs), np.asarray(model(_inputs(radiographs), training=False)),
                       atol=1e-5)
    analysis = classifier.analyze(radiographs[0])
    assert analysis.cams.shape == (3, SIZE[0] // 8, SIZE[1] // 8)
    gradcam = Gradcam(classifier._explainers.logits_model, clone=False)
    seed = classifier.model_input(radiographs[0])[None]
    for k in range(3):
        maps = [np.asarray(gradcam(CategoricalScore([k]), seed, penultimate_layer=layer,
                                   seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False))[0]
                for layer in bundle.gradcam_layers]
        reference = add_maps(maps)
        if reference.max() > 0:
            assert np.corrcoef(reference.ravel(), analysis.cams[k].ravel())[0, 1] >= 0.999
    # covid and pneumonia depend on the 224 stage: their maps include that grid; normal's (1 - a) does not
    assert np.asarray(gradcam(CategoricalScore([1]), seed, penultimate_layer="s224_block4_conv3",
                              seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False)).max() == 0
    explanation = classifier.explain(radiographs[0], "gradcam++", 0)
    assert explanation.raw.shape == analysis.cams.shape[1:] and np.isfinite(explanation.raw).all()


def test_keras_export_loads_in_safe_mode(saved, tmp_path):
    from xrayviewer.model.bundle import export_keras, load_bundle, load_keras_file

    out = export_keras(saved, tmp_path / "two-stage.keras")
    reloaded = load_keras_file(out)
    x = _inputs(_radiographs(2))
    assert np.allclose(np.asarray(reloaded(x, training=False)),
                       np.asarray(load_bundle(saved).build_keras_model()(x, training=False)), atol=1e-5)


def test_a_different_lung_model_is_refused(saved, tmp_path):
    import shutil

    from xrayviewer.model.bundle import BundleError, load_bundle
    from xrayviewer.model.two_scale import build_two_scale_classifier, make_head

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["head"]["lung_weights_sha256"] = "0" * 64
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="lung model"):
        load_bundle(copy).build_keras_model()
    with pytest.raises(ValueError, match="exactly the classes"):
        build_two_scale_classifier(["covid", "normal"], make_head(), SIZE)
