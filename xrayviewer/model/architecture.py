"""Layer names and the head, shared by the classifier, the training engine and the bundle loader.

The full classifier is flat: base layers, then `head_pool` -> `head_dense` -> `head_dropout` -> `head_logits`
-> `probs` (softmax). Pooling has no weights, so a head trained on cached pooled features transplants exactly
(by layer name) into the full model. Grad-CAM reads the base's conv layer and differentiates `head_logits`.
"""

from __future__ import annotations

from typing import Any

HEAD_LAYERS = ("head_dense", "head_logits")          # layers with weights
DEFAULT_HEAD: dict[str, Any] = {"pooling": "avg", "units": 64, "dropout": 0.5}


def _head_stack(x, n_classes: int, head: dict[str, Any]):
    import keras

    if head.get("units"):
        x = keras.layers.Dense(int(head["units"]), activation="relu", name="head_dense")(x)
        x = keras.layers.Dropout(float(head.get("dropout", 0.0)), name="head_dropout")(x)
    logits = keras.layers.Dense(n_classes, name="head_logits")(x)
    return logits


def build_head_model(feature_dim: int, n_classes: int, head: dict[str, Any] | None = None):
    """Head on pooled features: (n, feature_dim) -> logits (n, n_classes). Trained on cached features."""
    import keras

    head = {**DEFAULT_HEAD, **(head or {})}
    inputs = keras.Input((feature_dim,), name="features")
    return keras.Model(inputs, _head_stack(inputs, n_classes, head), name="head")


def build_classifier(base_id: str, n_classes: int, head: dict[str, Any] | None = None,
                     input_size: tuple[int, int] | None = None):
    """Flat keras.Model: image (rows, cols, 3) preprocessed -> class probabilities. Base frozen."""
    import keras

    from xrayviewer.model.backbone import build_base

    head = {**DEFAULT_HEAD, **(head or {})}
    inputs, base_out, _spec = build_base(base_id, input_size)
    pool = keras.layers.GlobalMaxPooling2D if head.get("pooling") == "max" else keras.layers.GlobalAveragePooling2D
    x = pool(name="head_pool")(base_out)
    logits = _head_stack(x, n_classes, head)
    probs = keras.layers.Activation("softmax", name="probs")(logits)
    return keras.Model(inputs, probs, name="classifier")


def copy_head_weights(head_model, classifier) -> None:
    """Transplant a trained head (build_head_model) into a full classifier, by layer name."""
    for name in HEAD_LAYERS:
        try:
            src = head_model.get_layer(name)
        except ValueError:
            continue
        classifier.get_layer(name).set_weights(src.get_weights())


def build_tail_model(classifier, cut_layer: str):
    """The classifier from `cut_layer`'s output on: (cut maps) -> [pooled features (`head_pool`), logits].

    A view of the classifier's own graph, not a copy: the same layer objects and weights (the last conv block,
    the `head_pool` pooling step, the head), so training the tail trains the classifier, and whatever pooling
    build_classifier builds is the pooling the tail uses. Used to fine-tune the last conv block on cached maps.
    """
    import keras

    return keras.Model(classifier.get_layer(cut_layer).output,
                       [classifier.get_layer("head_pool").output, classifier.get_layer("head_logits").output],
                       name="tail")
