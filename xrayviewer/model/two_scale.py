"""The two-stage, two-scale classifier: abnormal vs normal at 336, then covid vs pneumonia inside the lungs at 224.

Why (models/default/MODEL_CARD.md, "Two decisions at two scales"): NIH pneumonia vs normal needs the detail of a
336 input; ieee8023 covid vs pneumonia needs block4 features pooled inside the lung field at 224 (at 336 block4's
view of a lung is too local, and pooling the whole image sees the paper figures' borders, arrows and text). No
single-scale model measured met both floors; this one did.

One flat Keras graph with one input (the usual 336 model input), so prediction, Grad-CAM, tf-keras-vis and the
bundle stay as for any classifier:

    image ─ VGG16 block1..4 (hed weights) ─ block4_pool ─ head_pool (GAP) ─ stage_abnormal (Dense 1) ─┐
      ├─ s224_resize ─ s224_block1..4 (same weights) ─ s224_block4_conv3 ─┐                           ├─ head_logits
      └─ lung_input ─ lung_unet (models/lungs) ─ lung probability ─────── lung_mean ─ stage_covid ─────┘   ─ probs

`head_logits` holds log-probabilities: p(positive) = a·b, p(negative) = 1 - a, p(other) = a·(1 - b), with
a = σ(stage_abnormal) and b = σ(stage_covid); softmax of them gives the probabilities back, so temperature scaling
and Grad-CAM (gradient of each class's log-probability) work as for a softmax head. Grad-CAM reads block4_conv3
(abnormal vs normal) and s224_block4_conv3 (covid vs pneumonia, inside the lungs) and sums them on the 42x42 grid.
The custom layers are registered, so a `.keras` export loads in safe mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

TWO_STAGE_KIND = "two-stage-lungs"
BRANCH_PREFIX = "s224_"
STAGE_LAYERS = ("stage_abnormal", "stage_covid")
EXTRA_GRADCAM_LAYER = f"{BRANCH_PREFIX}block4_conv3"
_CAFFE_BLUE_MEAN = 103.939     # channel 0 of the model input is gray*255 - this (preprocess.py)
_VGG_BLOCKS = ((1, 64, 2), (2, 128, 2), (3, 256, 3), (4, 512, 3))


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an area-averaging shrink along one axis: each output cell averages the input
    cells it covers, by overlap."""
    if n_out > n_in:
        raise ValueError(f"area resizing only shrinks ({n_in} -> {n_out})")
    scale = n_in / n_out
    out = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start, stop = i * scale, (i + 1) * scale
        for j in range(int(np.floor(start)), min(int(np.ceil(stop)), n_in)):
            out[i, j] = (min(stop, j + 1) - max(start, j)) / scale
    return out


def is_two_stage(head: dict[str, Any] | None) -> bool:
    return bool(head) and head.get("kind") == TWO_STAGE_KIND


def _layers():
    """The custom layers, defined on first use (keras is imported lazily everywhere in the model core)."""
    global _LAYERS
    if _LAYERS is not None:
        return _LAYERS
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="xrayviewer")
    class AreaResize(keras.layers.Layer):
        """Area-averaging shrink (cv2.INTER_AREA, tf.image.resize "area") to a fixed (rows, cols), written as two
        fixed matrix products because TensorFlow's area resize has no gradient (Grad-CAM differentiates through
        the branch it feeds)."""

        def __init__(self, size, **kwargs):
            super().__init__(**kwargs)
            self.size = tuple(int(v) for v in size)

        def build(self, input_shape):
            self._rows = tf.constant(area_matrix(int(input_shape[1]), self.size[0]))
            self._cols = tf.constant(area_matrix(int(input_shape[2]), self.size[1]))

        def call(self, x):
            return tf.einsum("oh,nhwc,pw->nopc", self._rows, x, self._cols)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], *self.size, input_shape[-1])

        def get_config(self):
            return {**super().get_config(), "size": list(self.size)}

    @keras.saving.register_keras_serializable(package="xrayviewer")
    class LungFieldInput(keras.layers.Layer):
        """Model input -> the lung segmenter's input (lungs.segmenter_input): gray 0..1, area-resized, z-scored."""

        def __init__(self, size, **kwargs):
            super().__init__(**kwargs)
            self.size = tuple(int(v) for v in size)

        def call(self, x):
            gray = (tf.stop_gradient(x[..., :1]) + _CAFFE_BLUE_MEAN) / 255.0    # no gradient: see AreaResize
            small = tf.image.resize(gray, self.size, method="area")
            mean = tf.reduce_mean(small, axis=[1, 2, 3], keepdims=True)
            std = tf.math.reduce_std(small, axis=[1, 2, 3], keepdims=True)
            return (small - mean) / tf.maximum(std, 1e-3)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], *self.size, 1)

        def get_config(self):
            return {**super().get_config(), "size": list(self.size)}

    @keras.saving.register_keras_serializable(package="xrayviewer")
    class LungMean(keras.layers.Layer):
        """[maps (n, h, w, k), lung probability (n, H, W, 1)] -> (n, k): the maps averaged with the probability,
        area-averaged to the maps' grid, as weights (soft: no threshold, so the gradient is the plain mean's)."""

        def call(self, inputs):
            maps, probability = inputs
            weights = tf.image.resize(tf.stop_gradient(probability), tf.shape(maps)[1:3], method="area")
            total = tf.reduce_sum(maps * weights, axis=[1, 2])
            return total / tf.maximum(tf.reduce_sum(weights, axis=[1, 2]), 1e-3)

        def compute_output_shape(self, input_shape):
            return (input_shape[0][0], input_shape[0][-1])

    @keras.saving.register_keras_serializable(package="xrayviewer")
    class TwoStageLogits(keras.layers.Layer):
        """[abnormal logit (n, 1), positive-given-abnormal logit (n, 1)] -> log-probabilities (n, 3) in the
        model's class order; `order` = class indices of (positive, negative, other)."""

        def __init__(self, order, **kwargs):
            super().__init__(**kwargs)
            self.order = tuple(int(v) for v in order)

        def call(self, inputs):
            abnormal, positive = inputs
            log_a, log_not_a = -tf.nn.softplus(-abnormal), -tf.nn.softplus(abnormal)
            log_b, log_not_b = -tf.nn.softplus(-positive), -tf.nn.softplus(positive)
            by_index = dict(zip(self.order, (log_a + log_b, log_not_a, log_a + log_not_b)))
            return tf.concat([by_index[i] for i in range(3)], axis=-1)

        def compute_output_shape(self, input_shape):
            return (input_shape[0][0], 3)

        def get_config(self):
            return {**super().get_config(), "order": list(self.order)}

    _LAYERS = {"AreaResize": AreaResize, "LungFieldInput": LungFieldInput, "LungMean": LungMean,
               "TwoStageLogits": TwoStageLogits}
    return _LAYERS


_LAYERS: dict[str, Any] | None = None


def class_order(classes: Sequence[str], head: dict[str, Any]) -> tuple[int, int, int]:
    """Indices of (positive, negative, other) in `classes`, from the head's class names."""
    names = (head["positive"], head["negative"], head["other"])
    if len(classes) != 3 or sorted(classes) != sorted(names):
        raise ValueError(f"a {TWO_STAGE_KIND} head needs exactly the classes {', '.join(names)}; got {list(classes)}")
    return tuple(list(classes).index(n) for n in names)   # type: ignore[return-value]


def make_head(positive: str = "covid", negative: str = "normal", other: str = "pneumonia",
              branch_size: tuple[int, int] = (224, 224), lung_weights_sha256: str = "") -> dict[str, Any]:
    return {"kind": TWO_STAGE_KIND, "positive": positive, "negative": negative, "other": other,
            "branch_size": [int(v) for v in branch_size], "lung_weights_sha256": lung_weights_sha256}


def _vgg_branch(x, prefix: str, weights_of: Callable[[str], list]):
    """VGG16 block1..4 again on `x`, layer names prefixed, weights of each conv layer from `weights_of(name)`."""
    import keras

    for block, filters, n_convs in _VGG_BLOCKS:
        for i in range(1, n_convs + 1):
            name = f"block{block}_conv{i}"
            layer = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=prefix + name,
                                        trainable=False)
            x = layer(x)
            layer.set_weights(weights_of(name))
        if block < 4:
            x = keras.layers.MaxPooling2D(2, name=f"{prefix}block{block}_pool")(x)
    return x


def build_two_scale_classifier(classes: Sequence[str], head: dict[str, Any], input_size: tuple[int, int],
                               lung_dir: str | Path | None = None):
    """The flat two-stage classifier (stage weights zero: set them with set_stage). Base and U-Net frozen."""
    import keras

    from xrayviewer.model.backbone import build_base
    from xrayviewer.model.lungs import load_lung_network

    layers = _layers()
    order = class_order(classes, head)
    inputs, base_out, _spec = build_base("vgg16-hed-block4", tuple(input_size))
    pooled = keras.layers.GlobalAveragePooling2D(name="head_pool")(base_out)
    small = layers["AreaResize"](head.get("branch_size", (224, 224)), name=f"{BRANCH_PREFIX}resize")(inputs)
    base = keras.Model(inputs, base_out)     # the branch copies the weights build_base loaded (no second read)
    maps = _vgg_branch(small, BRANCH_PREFIX, lambda name: base.get_layer(name).get_weights())
    unet, _meta = load_lung_network(lung_dir, expected_sha256=head.get("lung_weights_sha256") or None)
    unet.trainable = False
    lung_in = layers["LungFieldInput"](unet.input_shape[1:3], name="lung_input")(inputs)
    probability = unet(lung_in)
    lung_mean = layers["LungMean"](name="lung_mean")([maps, probability])
    abnormal = keras.layers.Dense(1, name="stage_abnormal", kernel_initializer="zeros")(pooled)
    positive = keras.layers.Dense(1, name="stage_covid", kernel_initializer="zeros")(lung_mean)
    logits = layers["TwoStageLogits"](order, name="head_logits")([abnormal, positive])
    probs = keras.layers.Activation("softmax", name="probs")(logits)
    return keras.Model(inputs, probs, name="classifier")


def feature_model(model):
    """(image) -> [336 GAP features (stage_abnormal's input), lung-field mean (stage_covid's input)]."""
    import keras

    return keras.Model(model.input, [model.get_layer("head_pool").output, model.get_layer("lung_mean").output],
                       name="stage_features")


def set_stage(model, name: str, kernel: np.ndarray, bias: float) -> None:
    model.get_layer(name).set_weights([np.asarray(kernel, np.float32).reshape(-1, 1),
                                       np.asarray([bias], np.float32)])


def stage_model(model=None):
    """The two stage layers alone (for the bundle's head weights file), weights copied from `model` if given."""
    import keras

    a_in = keras.Input((512,), name="abnormal_features")
    b_in = keras.Input((512,), name="lung_features")
    out = [keras.layers.Dense(1, name=STAGE_LAYERS[0])(a_in), keras.layers.Dense(1, name=STAGE_LAYERS[1])(b_in)]
    stages = keras.Model([a_in, b_in], out, name="stages")
    if model is not None:
        for name in STAGE_LAYERS:
            stages.get_layer(name).set_weights(model.get_layer(name).get_weights())
    return stages


def copy_stages(stages, model) -> None:
    for name in STAGE_LAYERS:
        model.get_layer(name).set_weights(stages.get_layer(name).get_weights())
