"""Class activation maps: upsampling to the image, and the slower tf-keras-vis methods (Grad-CAM++, Score-CAM).

Plain Grad-CAM for every class comes out of the classifier's single compiled pass (classifier.py); this module
holds what turns a conv-grid map into a heatmap over the original image, and the methods computed on demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

METHODS = ("gradcam", "gradcam++", "scorecam")
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM"}


def add_maps(maps: list[np.ndarray]) -> np.ndarray:
    """Maps of several conv grids -> one map on the first grid: the others resized bilinearly onto it, then added
    (as the classifier's compiled pass does; cv2 and tf.image.resize both align pixel centres)."""
    first = np.asarray(maps[0], np.float32)
    total = first.copy()
    for cam in maps[1:]:
        total += cv2.resize(np.asarray(cam, np.float32), (first.shape[1], first.shape[0]),
                            interpolation=cv2.INTER_LINEAR)
    return total


def upsample_cam(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Conv-grid map (h, w) -> float32 (rows, cols) in 0..1 over the original image.

    The model input is a plain resize of the image (no letterbox), so a plain resize maps the grid back; bilinear
    with cv2's pixel-centre alignment puts each cell's centre on the centre of the image region it saw.
    Max-normalised: the hottest point is 1; an all-zero map (no positive evidence) stays all zero.
    """
    rows, cols = int(shape[0]), int(shape[1])
    cam = np.nan_to_num(np.asarray(cam, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    big = cv2.resize(np.maximum(cam, 0.0), (cols, rows), interpolation=cv2.INTER_LINEAR)
    peak = float(big.max()) if big.size else 0.0
    if peak > 0:
        big /= peak
    return np.clip(big, 0.0, 1.0).astype(np.float32)


@dataclass
class Explanation:
    """A class activation map: `raw` on the conv grid (h, w), `heatmap` 0..1 at the original image size."""

    raw: np.ndarray
    heatmap: np.ndarray
    class_index: int
    method: str


class TfKerasVisExplainers:
    """Grad-CAM++ and Score-CAM (Faster-Score-CAM) through tf-keras-vis, each object built once and reused.

    tf-keras-vis clones a model when given a model modifier, which costs 0.25-1 s; so instead of ReplaceToLinear
    both get a logits model sharing the classifier's layers (no clone). Score-CAM applies softmax to the model
    output itself, so logits are also what it expects. Layers are named, never passed as objects.
    """

    def __init__(self, model, gradcam_layers: str | list[str], scorecam_max_n: int = 10,
                 scorecam_batch_size: int = 16):
        import keras

        self.model = model
        self.logits_model = keras.Model(model.inputs, model.get_layer("head_logits").output, name="logits")
        # one layer, or several whose maps are added on the first one's grid (a two-scale model)
        self.gradcam_layers = [gradcam_layers] if isinstance(gradcam_layers, str) else list(gradcam_layers)
        self.scorecam_max_n = scorecam_max_n
        self.scorecam_batch_size = scorecam_batch_size
        self._gradcam_pp = None
        self._scorecam = None

    def _objects(self, method: str):
        if method == "gradcam++":
            if self._gradcam_pp is None:
                from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus

                self._gradcam_pp = GradcamPlusPlus(self.logits_model, clone=False)
            return self._gradcam_pp
        if method == "scorecam":
            if self._scorecam is None:
                from tf_keras_vis.scorecam import Scorecam

                self._scorecam = Scorecam(self.logits_model, clone=False)
            return self._scorecam
        raise ValueError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")

    def raw_map(self, method: str, model_input: np.ndarray, class_index: int) -> np.ndarray:
        """Map on the (first) conv grid (h, w), not normalised, for one preprocessed image (rows, cols, 3)."""
        explainer = self._objects(method)
        seed = np.asarray(model_input, np.float32)[None]
        return add_maps([self._layer_map(explainer, method, seed, class_index, layer) for layer in self.gradcam_layers])

    def _layer_map(self, explainer, method: str, seed: np.ndarray, class_index: int, layer: str) -> np.ndarray:
        from tf_keras_vis.utils.scores import CategoricalScore

        kwargs = dict(penultimate_layer=layer, seek_penultimate_conv_layer=False,
                      expand_cam=False, normalize_cam=False)
        if method == "scorecam":
            kwargs.update(max_N=self.scorecam_max_n, batch_size=self.scorecam_batch_size)
        # Score-CAM runs model.predict, whose progress bar would land in the CLI's CSV on stdout.
        import keras

        was_interactive = keras.config.is_interactive_logging_enabled()
        keras.config.disable_interactive_logging()
        try:
            cam = explainer(CategoricalScore([int(class_index)]), seed, **kwargs)
        finally:
            if was_interactive:
                keras.config.enable_interactive_logging()
        return np.asarray(cam, np.float32)[0]
