"""Prediction and Grad-CAM for every class in one compiled pass.

The compiled functions have a fixed input signature [None, rows, cols, 3] float32, so they trace once per
classifier and never fall back to `model.predict`. Grad-CAM needs the gradient of each class logit with respect to
the Grad-CAM layer's activations only; that gradient runs back through the head alone, so all-class maps cost little
more than the forward pass itself (benchmarks/bench_inference.py measures the ratio).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from xrayviewer.imaging.preprocess import to_model_batch, to_model_input
from xrayviewer.imaging.radiograph import Radiograph
from xrayviewer.model.bundle import BundleError, ModelBundle, load_bundle
from xrayviewer.model.explain import METHODS, Explanation, TfKerasVisExplainers, upsample_cam
from xrayviewer.results import ClassProbabilities

log = logging.getLogger(__name__)


@dataclass
class Analysis(ClassProbabilities):
    """Everything one pass gives for one radiograph.

    probabilities (C,) calibrated (softmax of logits / temperature); logits (C,); cams (C, h, w) raw Grad-CAM on
    the conv grid for every class (None when computed without maps); features (D,) pooled base features;
    ood_score / ood_flag when the bundle carries out-of-distribution statistics; original_shape (rows, cols).
    """

    classes: list[str]
    probabilities: np.ndarray
    logits: np.ndarray
    cams: np.ndarray | None
    features: np.ndarray
    original_shape: tuple[int, int]
    ood_score: float | None = None
    ood_flag: bool = False

    def probability_dict(self) -> dict[str, float]:
        return {c: float(p) for c, p in zip(self.classes, self.probabilities)}

    def heatmap(self, class_index: int | None = None, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Grad-CAM of `class_index` (default: the predicted class), float32 0..1 at `shape` (default: original)."""
        if self.cams is None:
            raise ValueError("this analysis was computed without Grad-CAM maps")
        index = self.predicted_index if class_index is None else int(class_index)
        return upsample_cam(self.cams[index], shape or self.original_shape)


class Classifier:
    """A loaded bundle ready to predict and explain. Thread-safe: TensorFlow calls run under one lock."""

    def __init__(self, bundle: ModelBundle, model, *, scorecam_max_n: int = 10):
        import tensorflow as tf

        self.bundle = bundle
        self.model = model
        self.classes = bundle.classes
        self.input_size = bundle.input_size
        self.temperature = float(bundle.temperature)
        self._lock = threading.Lock()
        convs = []
        for name in bundle.gradcam_layers:
            try:
                convs.append(model.get_layer(name).output)
            except ValueError as err:
                raise BundleError(f"model '{bundle.name}': its Grad-CAM layer {name!r} is not in the model") from err
        import keras

        # One model, these outputs: the conv activations Grad-CAM reads (one grid, or two for a two-scale model),
        # the logits, the pooled features.
        self._taps = keras.Model(model.inputs, [*convs, model.get_layer("head_logits").output,
                                                model.get_layer("head_pool").output], name="taps")
        rows, cols = self.input_size
        signature = [tf.TensorSpec([None, rows, cols, 3], tf.float32)]
        self._forward_fn = tf.function(self._forward, input_signature=signature, reduce_retracing=False)
        self._analyze_fn = tf.function(self._analyze, input_signature=signature, reduce_retracing=False)
        self._ood = self._load_ood()
        self._explainers = TfKerasVisExplainers(model, bundle.gradcam_layers, scorecam_max_n=scorecam_max_n)
        self._last: tuple[Radiograph, Analysis] | None = None
        self._pass_seconds: deque[float] = deque(maxlen=9)   # per image, the compiled pass with Grad-CAM
        self._traced = False

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path_or_bundle: str | os.PathLike | ModelBundle, **kwargs) -> "Classifier":
        """Load and validate a bundle and build its model (seconds: call from a worker). Raises BundleError."""
        bundle = path_or_bundle if isinstance(path_or_bundle, ModelBundle) else load_bundle(path_or_bundle)
        return cls(bundle, bundle.build_keras_model(), **kwargs)

    def _load_ood(self):
        spec = self.bundle.ood
        if not spec:
            return None
        try:
            from xrayviewer.model.ood import OODStats
        except ImportError:
            log.info("bundle %s has OOD statistics but this build has no OOD module; skipped", self.bundle.name)
            return None
        try:
            return OODStats.load(self.bundle.path, spec)
        except Exception as err:
            raise BundleError(f"model '{self.bundle.name}': its out-of-distribution statistics cannot be read "
                              f"({err})") from err

    # -------------------------------------------------------------------------------------- compiled passes
    def _probabilities(self, logits):
        import tensorflow as tf

        return tf.nn.softmax(logits / self.temperature, axis=-1)

    def _forward(self, images):
        *_convs, logits, pooled = self._taps(images, training=False)
        return self._probabilities(logits), logits, pooled

    def _analyze(self, images):
        import tensorflow as tf

        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(images)  # frozen base: without this the conv output is not on the tape
            *convs, logits, pooled = self._taps(images, training=False)
            # Summing over the batch keeps per-image gradients apart (images do not interact).
            class_scores = [tf.reduce_sum(logits[:, c]) for c in range(len(self.classes))]
        grid = tf.shape(convs[0])[1:3]
        cams = []
        for score in class_scores:
            cam = None
            for conv in convs:
                grads = tape.gradient(score, conv)                  # (n, h, w, k), through the head only
                weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
                layer_cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1))    # (n, h, w)
                if cam is not None:     # a second grid (two-scale model): bilinear onto the first, then added
                    layer_cam = tf.image.resize(layer_cam[..., None], grid, method="bilinear")[..., 0]
                cam = layer_cam if cam is None else cam + layer_cam
            cams.append(cam)
        del tape
        return self._probabilities(logits), logits, pooled, tf.stack(cams, axis=1)   # cams (n, C, h, w)

    # --------------------------------------------------------------------------------------------- public API
    def model_input(self, radiograph: Radiograph) -> np.ndarray:
        return to_model_input(radiograph, self.input_size, self.bundle.preprocessing)

    def _batch(self, radiographs: Sequence[Radiograph]) -> np.ndarray:
        return to_model_batch(radiographs, self.input_size, self.bundle.preprocessing)

    def _ood_scores(self, features: np.ndarray, images: np.ndarray) -> tuple[list[float | None], list[bool]]:
        if self._ood is None:
            return [None] * len(features), [False] * len(features)
        # the model inputs too: an inverted radiograph has ordinary pooled features, but not ordinary brightness
        scores = np.asarray(self._ood.score(features, images), np.float64).reshape(-1)
        return [float(s) for s in scores], [bool(s > self._ood.threshold) for s in scores]

    def analyze_batch(self, radiographs: Sequence[Radiograph], *, cams: bool = True,
                      batch_size: int = 8) -> list[Analysis]:
        """One Analysis per radiograph; with cams=False only the forward pass runs (no Grad-CAM maps)."""
        out: list[Analysis] = []
        for start in range(0, len(radiographs), batch_size):
            chunk = list(radiographs[start:start + batch_size])
            out.extend(self.analyze_inputs(self._batch(chunk), [r.shape for r in chunk], cams=cams))
        return out

    def analyze_inputs(self, images: np.ndarray, original_shapes: Sequence[tuple[int, int]], *,
                       cams: bool = True) -> list[Analysis]:
        """Analyses of already preprocessed images (n, rows, cols, 3), e.g. when the originals were let go early."""
        x = np.asarray(images, np.float32)
        with self._lock:
            if cams:
                started = time.perf_counter()
                probs, logits, pooled, maps = (t.numpy() for t in self._analyze_fn(x))
                if self._traced:        # the first call also traces the function: not this machine's speed
                    self._pass_seconds.append((time.perf_counter() - started) / max(len(x), 1))
                self._traced = True
            else:
                probs, logits, pooled = (t.numpy() for t in self._forward_fn(x))
                maps = None
        ood_scores, ood_flags = self._ood_scores(pooled, x)
        return [Analysis(self.classes, probs[i], logits[i], None if maps is None else maps[i], pooled[i],
                         tuple(int(v) for v in original_shapes[i][:2]), ood_scores[i], ood_flags[i])
                for i in range(len(x))]

    @property
    def seconds_per_analysis(self) -> float | None:
        """Median seconds of the compiled pass (probabilities + Grad-CAM) per image, measured on this machine by
        the last analyses; None before two have run. Time estimates scale with it."""
        values = list(self._pass_seconds)     # one C-level copy: a worker may append meanwhile
        return float(np.median(values)) if values else None

    def analyze(self, radiograph: Radiograph) -> Analysis:
        """Probabilities, all-class Grad-CAM, features and OOD for one radiograph, in one compiled pass."""
        analysis = self.analyze_batch([radiograph])[0]
        self._last = (radiograph, analysis)
        return analysis

    def predict(self, radiographs: Sequence[Radiograph], batch_size: int = 16) -> np.ndarray:
        """Calibrated probabilities (n, C)."""
        return self._run_forward(radiographs, batch_size)[0]

    def features(self, radiographs: Sequence[Radiograph], batch_size: int = 16) -> np.ndarray:
        """Pooled base features (n, D), the ones the head and the OOD statistics see."""
        return self._run_forward(radiographs, batch_size)[1]

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for already preprocessed images (n, rows, cols, 3) float32."""
        with self._lock:
            return self._forward_fn(np.asarray(images, np.float32))[0].numpy()

    def _run_forward(self, radiographs: Sequence[Radiograph], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        probs, feats = [], []
        for start in range(0, len(radiographs), batch_size):
            x = self._batch(radiographs[start:start + batch_size])
            with self._lock:
                p, _logits, f = self._forward_fn(x)
                probs.append(p.numpy())
                feats.append(f.numpy())
        if not probs:
            n_features = int(self._taps.outputs[-1].shape[-1])
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, n_features), np.float32)
        return np.concatenate(probs), np.concatenate(feats)

    def explain(self, radiograph: Radiograph, method: str = "gradcam", class_index: int | None = None) -> Explanation:
        """A class activation map by `method` ("gradcam", "gradcam++", "scorecam"); default class: the predicted.

        Grad-CAM reuses the last analyze() of the same radiograph; the other two run tf-keras-vis (seconds).
        """
        if method not in METHODS:
            raise ValueError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
        if self._last is not None and self._last[0] is radiograph:
            analysis = self._last[1]
        else:
            analysis = self.analyze(radiograph)
        index = analysis.predicted_index if class_index is None else int(class_index)
        if not 0 <= index < len(self.classes):
            raise ValueError(f"class index {index} out of range for classes {self.classes}")
        if method == "gradcam":
            raw = analysis.cams[index]
        else:
            with self._lock:
                raw = self._explainers.raw_map(method, self.model_input(radiograph), index)
        return Explanation(raw, upsample_cam(raw, radiograph.shape), index, method)
