"""Lung fields: a compact U-Net segmenter, the share of heatmap attention inside the lungs, outlines for drawing.

The segmenter is a bundle of its own (models/lungs/): `model.json` (kind "lung-segmenter") + `*.weights.h5`.
It sees the radiograph resized to a small square and standardised per image (sources differ wildly in exposure),
and answers with a mask at the radiograph's original size. TensorFlow is imported lazily.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from xrayviewer.imaging.errors import FileAccessError
from xrayviewer.imaging.hashing import file_sha256
from xrayviewer.imaging.radiograph import Radiograph
from xrayviewer.model.bundle import BundleError
from xrayviewer.paths import LUNG_MODEL_DIR

LUNG_BUNDLE_KIND = "lung-segmenter"
LUNG_PREPROCESSING_ID = "gray-resize-zscore-v1"
LUNG_FORMAT_VERSION = 1
THRESHOLD = 0.5
MIN_COMPONENT_FRACTION = 0.002  # a component smaller than this share of the image is noise, not a lung


class LungModelError(BundleError):
    """The lung bundle is missing, incomplete or not a lung segmenter; `str()` says what to do."""


# ---------------------------------------------------------------------------------------------- preprocessing
def resize_for_segmenter(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Grayscale 0..1 (any size) -> float32 (rows, cols); area averaging when shrinking."""
    rows, cols = size
    pixels = np.asarray(pixels, np.float32)
    interp = cv2.INTER_AREA if pixels.shape[0] > rows or pixels.shape[1] > cols else cv2.INTER_LINEAR
    return cv2.resize(pixels, (cols, rows), interpolation=interp)


def standardize(small: np.ndarray) -> np.ndarray:
    """Per-image zero mean, unit variance (a blank image stays all zeros)."""
    small = np.asarray(small, np.float32)
    std = float(small.std())
    return ((small - float(small.mean())) / max(std, 1e-3)).astype(np.float32)


def segmenter_input(radiograph: Radiograph | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The segmenter's preprocessing (LUNG_PREPROCESSING_ID): (rows, cols, 1) float32."""
    pixels = radiograph.pixels if isinstance(radiograph, Radiograph) else radiograph
    pixels = np.asarray(pixels, np.float32)
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(axis=2)
    if pixels.ndim != 2 or min(pixels.shape) < 8:
        raise ValueError(f"expected a 2-D grayscale image of at least 8x8 pixels, got shape {pixels.shape}")
    return standardize(resize_for_segmenter(pixels, size))[:, :, None]


# ---------------------------------------------------------------------------------------------- network
def build_unet(input_size: tuple[int, int] = (192, 192), base_filters: int = 16, depth: int = 4):
    """Compact U-Net: `depth` down-sampling levels, conv-BN-ReLU pairs, bilinear up-sampling, sigmoid output."""
    import keras
    from keras import layers

    def conv_pair(x, filters, name):
        for i in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
            x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        return x

    inputs = keras.Input((*input_size, 1), name="image")
    skips, x = [], inputs
    for level in range(depth):
        x = conv_pair(x, base_filters * 2 ** level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = conv_pair(x, base_filters * 2 ** depth, "bottom")
    for level in reversed(range(depth)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_upsample")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = conv_pair(x, base_filters * 2 ** level, f"up{level}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="lung_probability")(x)
    return keras.Model(inputs, outputs, name="lung_unet")


# ---------------------------------------------------------------------------------------------- post-processing
def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Keep the two largest connected components (the two lungs; tiny specks dropped) and fill their holes."""
    mask = np.asarray(mask, bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1][:2] + 1
    min_area = MIN_COMPONENT_FRACTION * mask.size
    keep = [label for label in order if stats[label, cv2.CC_STAT_AREA] >= min_area] or [order[0]]
    kept = np.isin(labels, keep)
    return fill_holes(kept)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background not reachable from the border becomes foreground (devices over a lung leave holes)."""
    mask = np.asarray(mask, bool)
    padded = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    n, labels = cv2.connectedComponents(padded, connectivity=4)
    outside = labels == labels[0, 0]
    return mask | ~outside[1:-1, 1:-1]


def probability_to_mask(probability: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Low-resolution lung probability -> cleaned bool mask at `shape` (rows, cols)."""
    rows, cols = shape
    big = cv2.resize(np.asarray(probability, np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    return clean_mask(big > THRESHOLD)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two bool masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


# ---------------------------------------------------------------------------------------------- attention, outline
def lung_attention(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share (0..1) of the positive heatmap mass that lies inside the lung mask; nan when there is no mass.

    A heatmap of another size (e.g. the raw conv grid) is resized to the mask first.
    """
    heat = np.asarray(heatmap, np.float32)
    mask = np.asarray(mask, bool)
    if heat.ndim != 2 or mask.ndim != 2:
        raise ValueError(f"heatmap and mask must be 2-D, got {heat.shape} and {mask.shape}")
    if heat.shape != mask.shape:
        heat = cv2.resize(heat, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    positive = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, None)
    total = float(positive.sum(dtype=np.float64))
    if total <= 0.0:
        return float("nan")
    return float(positive[mask].sum(dtype=np.float64) / total)


def outline(mask: np.ndarray) -> list[np.ndarray]:
    """Outer contours of the mask for drawing: a list of (n, 2) int32 arrays of (x, y) = (column, row) points."""
    contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2).astype(np.int32) for c in contours if len(c) >= 3]


# ---------------------------------------------------------------------------------------------- bundle
def read_lung_meta(path: str | Path) -> dict[str, Any]:
    """Validate a lung bundle folder and return its model.json (raises LungModelError with a clear message)."""
    folder = Path(path)
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise LungModelError(f"{folder} is not a lung model: model.json is missing.")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LungModelError(f"{meta_path} cannot be read as JSON ({err}).") from None
    if not isinstance(meta, dict) or meta.get("kind") != LUNG_BUNDLE_KIND:
        raise LungModelError(f"{folder} is not a lung segmenter (model.json kind is "
                             f"{meta.get('kind') if isinstance(meta, dict) else None!r}, expected {LUNG_BUNDLE_KIND!r}).")
    if meta.get("format_version") != LUNG_FORMAT_VERSION:
        raise LungModelError(f"{meta_path}: format_version {meta.get('format_version')!r} is not supported "
                             f"(this app reads {LUNG_FORMAT_VERSION}).")
    if meta.get("preprocessing") != LUNG_PREPROCESSING_ID:
        raise LungModelError(f"{meta_path}: unknown preprocessing {meta.get('preprocessing')!r}.")
    try:
        rows, cols = (int(v) for v in meta["input_size"])
        arch = meta["architecture"]
        int(arch["base_filters"]), int(arch["depth"])
        weights = folder / str(meta["weights"]["file"])
        expected = str(meta["weights"]["sha256"])
    except (KeyError, TypeError, ValueError):
        raise LungModelError(f"{meta_path} lacks input_size, architecture or weights {{file, sha256}}.") from None
    if rows % 16 or cols % 16 or rows <= 0 or cols <= 0:
        raise LungModelError(f"{meta_path}: input_size {rows}x{cols} must be positive multiples of 16.")
    if not weights.is_file():
        raise LungModelError(f"lung model weights {weights} are missing.")
    try:
        actual = file_sha256(weights, memo=False)
    except FileAccessError as err:
        raise LungModelError(f"lung model weights {weights} cannot be read ({err}).") from None
    if actual != expected:
        raise LungModelError(f"lung model weights {weights} do not match the sha256 in model.json "
                             "(damaged or replaced file).")
    return meta


def load_lung_network(path: str | Path | None = None, *, expected_sha256: str | None = None):
    """(U-Net keras model with the bundle's weights, model.json) of the lung bundle at `path` (default models/lungs).

    `expected_sha256`: the weights a classifier was fitted with (a two-stage classifier pools inside these lungs);
    other weights are refused."""
    path = Path(path) if path is not None else LUNG_MODEL_DIR
    meta = read_lung_meta(path)
    if expected_sha256 is not None and meta["weights"]["sha256"] != expected_sha256:
        raise LungModelError(f"the lung model in {path} is not the one this classifier was trained with "
                             f"(weights sha256 {meta['weights']['sha256'][:12]}…, expected {expected_sha256[:12]}…).")
    arch = meta["architecture"]
    model = build_unet(tuple(meta["input_size"]), int(arch["base_filters"]), int(arch["depth"]))
    weights = path / meta["weights"]["file"]
    try:
        model.load_weights(str(weights))
    except Exception as err:  # h5py/keras raise many types for a file that does not fit the network
        raise LungModelError(f"lung model weights {weights} do not fit the network in model.json ({err}).") from None
    return model, meta


class LungSegmenter:
    """Lung-field segmentation. Load once (slow, TensorFlow), then `segment()` from any thread."""

    def __init__(self, model, meta: dict[str, Any], path: Path | None = None):
        import tensorflow as tf

        self.meta = meta
        self.path = path
        self.input_size: tuple[int, int] = tuple(int(v) for v in meta["input_size"])  # type: ignore[assignment]
        self._model = model
        self._lock = threading.Lock()
        self._forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                                    input_signature=[tf.TensorSpec((None, *self.input_size, 1), tf.float32)])

    @classmethod
    def load(cls, path: str | Path = LUNG_MODEL_DIR) -> "LungSegmenter":
        model, meta = load_lung_network(path)
        return cls(model, meta, Path(path))

    def probabilities(self, radiographs) -> np.ndarray:
        """(n, rows, cols) lung probability at the segmenter's input size."""
        batch = np.stack([segmenter_input(r, self.input_size) for r in radiographs]).astype(np.float32)
        with self._lock:
            out = self._forward(batch).numpy()
        return out[..., 0]

    def segment(self, radiograph: Radiograph | np.ndarray) -> np.ndarray:
        """Bool lung mask at the radiograph's original size (two largest components, holes filled)."""
        pixels = radiograph.pixels if isinstance(radiograph, Radiograph) else np.asarray(radiograph)
        probability = self.probabilities([radiograph])[0]
        return probability_to_mask(probability, pixels.shape[:2])
