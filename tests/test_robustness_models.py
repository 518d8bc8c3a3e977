"""Damaged or hostile model files are refused with a message a person can act on, and nothing else breaks.

Each case starts from a good bundle (the tiny small-cnn stand-in: the checks under test are the same for every
base) and damages one thing: the weights' hash, the weights file itself, the format version, model.json, the base
weights it was trained on; plus a `.keras` file carrying a Lambda layer, which safe mode must refuse *without running
its code*. The app-level half (the window keeps its model and shows the message) is in test_robustness_gui.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from robustness_support import build_tiny_model, save_tiny_bundle

from xrayviewer.model.bundle import MODEL_JSON, BundleError, load_bundle, load_keras_file


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory) -> Path:
    return save_tiny_bundle(tmp_path_factory.mktemp("models") / "good")


@pytest.fixture
def damaged(good_bundle, tmp_path) -> Path:
    """A fresh copy of the good bundle, to damage."""
    return Path(shutil.copytree(good_bundle, tmp_path / "damaged"))


def edit_meta(bundle: Path, change) -> None:
    meta = json.loads((bundle / MODEL_JSON).read_text())
    change(meta)
    (bundle / MODEL_JSON).write_text(json.dumps(meta))


def _refused(path: Path) -> str:
    """load_bundle + building the model must raise BundleError (never another exception); return its message."""
    with pytest.raises(BundleError) as info:
        load_bundle(path).build_keras_model()
    message = str(info.value)
    assert "Traceback" not in message and len(message) < 600
    return message


def test_good_bundle_loads(good_bundle):
    bundle = load_bundle(good_bundle)
    assert bundle.classes == ["normal", "pneumonia"]
    assert bundle.build_keras_model().output_shape[-1] == 2


def test_wrong_weights_hash_is_refused(damaged):
    edit_meta(damaged, lambda m: m["weights"].update(sha256="0" * 64))
    assert "damaged or was changed" in _refused(damaged)


def test_changed_weights_bytes_are_refused(damaged):
    weights = damaged / json.loads((damaged / MODEL_JSON).read_text())["weights"]["file"]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert "damaged or was changed" in _refused(damaged)


def test_truncated_weights_file_is_refused(damaged):
    weights = damaged / json.loads((damaged / MODEL_JSON).read_text())["weights"]["file"]
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "damaged or was changed" in _refused(damaged)


def test_truncated_weights_with_matching_hash_still_give_bundle_error(damaged):
    """Someone 'repaired' the hash: the file passes validation, and building must still fail cleanly."""
    import hashlib

    weights = damaged / json.loads((damaged / MODEL_JSON).read_text())["weights"]["file"]
    weights.write_bytes(weights.read_bytes()[:2048])
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    edit_meta(damaged, lambda m: m["weights"].update(sha256=digest))
    assert "weights do not fit" in _refused(damaged)


def test_missing_weights_file_is_refused(damaged):
    meta = json.loads((damaged / MODEL_JSON).read_text())
    (damaged / meta["weights"]["file"]).unlink()
    assert "missing" in _refused(damaged)


@pytest.mark.parametrize("version, words", [(99, "newer XRayViewer"), ("1", "unknown format version"),
                                            (None, "unknown format version"), (0, "unknown format version")])
def test_unknown_format_version_is_refused(damaged, version, words):
    edit_meta(damaged, lambda m: m.update(format_version=version))
    assert words in _refused(damaged)


def test_model_json_that_is_not_json_is_refused(damaged):
    (damaged / MODEL_JSON).write_bytes(b"\x89PNG\r\n\x1a\n not json at all")
    assert "not valid JSON" in _refused(damaged)


def test_model_json_with_wrong_types_is_refused(damaged):
    edit_meta(damaged, lambda m: m.update(classes="covid", input_size=[224]))
    assert "class names" in _refused(damaged)


def test_weights_file_pointing_outside_the_bundle_is_refused(damaged):
    edit_meta(damaged, lambda m: m["weights"].update(file="../../etc/passwd"))
    assert "outside the bundle" in _refused(damaged)


def test_head_bundle_on_other_base_weights_is_refused(damaged):
    """A head trained on one copy of the VGG16 weights must not silently run on another."""
    def to_head_bundle(meta):
        meta["base"] = {"id": "vgg16-hed-block4", "weights_sha256": "0" * 64}
        meta["weights"]["scope"] = "head"

    edit_meta(damaged, to_head_bundle)
    assert "base weights differ" in _refused(damaged)


def test_not_a_folder_and_missing_folder_are_refused(tmp_path):
    stray = tmp_path / "model.h5"
    stray.write_bytes(b"\0" * 10)
    assert "not a model folder" in _refused(stray)
    assert "does not exist" in _refused(tmp_path / "nowhere")


def test_keras_file_with_lambda_layer_is_refused_without_running_its_code(tmp_path):
    import keras

    marker = tmp_path / "lambda-ran"
    inputs = keras.Input((4,))
    # The layer's function writes a file when called: if loading ran it, the marker would appear.
    target = str(marker)
    outputs = keras.layers.Lambda(lambda x: (open(target, "w").close(), x * 2.0)[1], name="sneaky")(inputs)
    model = keras.Model(inputs, outputs)
    marker.unlink(missing_ok=True)  # building the model called the function once
    path = tmp_path / "sneaky.keras"
    model.save(path)
    marker.unlink(missing_ok=True)

    with pytest.raises(BundleError) as info:
        load_keras_file(path)
    assert "Lambda" in str(info.value) and "refused" in str(info.value)
    assert not marker.exists(), "safe mode ran the Lambda layer's code"
    # Control: the file really carries running code (unsafe loading, done here on purpose, runs it).
    keras.saving.load_model(path, safe_mode=False, compile=False)(np.ones((1, 4), np.float32))
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"hello"])
def test_damaged_keras_file_is_refused(tmp_path, content):
    path = tmp_path / "broken.keras"
    path.write_bytes(content)
    with pytest.raises(BundleError):
        load_keras_file(path)


def test_truncated_real_keras_file_is_refused(tmp_path):
    path = tmp_path / "tiny.keras"
    build_tiny_model().save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BundleError) as info:
        load_keras_file(path)
    assert "damaged" in str(info.value) or "not a usable" in str(info.value)


def test_weights_changed_in_place_with_the_same_size_and_time_are_refused(damaged):
    """A bundle loaded once, then its weights altered on disk keeping size and mtime (a restore with `cp -p`, bit
    rot): loading it again in the same session must still see the change — hash memos must not vouch for it."""
    import os

    load_bundle(damaged).build_keras_model()
    weights = damaged / json.loads((damaged / MODEL_JSON).read_text())["weights"]["file"]
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "damaged or was changed" in _refused(damaged)
