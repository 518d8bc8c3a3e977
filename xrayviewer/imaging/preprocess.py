"""The one function that turns a radiograph into model input. Nothing else resizes for the model."""

from __future__ import annotations

import cv2
import numpy as np

from xrayviewer.imaging.radiograph import Radiograph

# keras.applications.vgg16.preprocess_input ("caffe" mode): RGB->BGR, then subtract the ImageNet means.
# Kept as constants so this module stays free of TensorFlow; a test checks parity with Keras.
_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)

PREPROCESSING_ID = "gray3-resize-vgg16caffe-v1"


def to_model_input(radiograph: Radiograph | np.ndarray, size: tuple[int, int] = (224, 224),
                   preprocessing: str = PREPROCESSING_ID) -> np.ndarray:
    """Radiograph (pixels 0..1) -> float32 array (size[0], size[1], 3) ready for the network.

    Plain resize (no letterbox) so a heatmap maps back to the image by a plain resize too.
    """
    if preprocessing != PREPROCESSING_ID:
        raise ValueError(f"unknown preprocessing {preprocessing!r}")
    pixels = radiograph.pixels if isinstance(radiograph, Radiograph) else np.asarray(radiograph, np.float32)
    rows, cols = size
    interp = cv2.INTER_AREA if pixels.shape[0] > rows or pixels.shape[1] > cols else cv2.INTER_LINEAR
    small = cv2.resize(pixels.astype(np.float32), (cols, rows), interpolation=interp)
    grey255 = np.clip(small, 0.0, 1.0) * 255.0
    out = np.repeat(grey255[:, :, None], 3, axis=2) - _CAFFE_BGR_MEAN
    return out.astype(np.float32)


def to_model_batch(radiographs, size: tuple[int, int] = (224, 224),
                   preprocessing: str = PREPROCESSING_ID) -> np.ndarray:
    """Stack of to_model_input: (n, rows, cols, 3) float32."""
    return np.stack([to_model_input(r, size, preprocessing) for r in radiographs]).astype(np.float32)
