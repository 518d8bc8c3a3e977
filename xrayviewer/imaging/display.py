"""Display transforms on 0..1 grayscale pixels (pure numpy; matplotlib only for colormap tables)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_AUTO_WINDOW_SAMPLE = 512  # auto_window looks at about this many rows/cols: fast on 3000 px images, same result


def window_level(pixels: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window: `center - width/2` maps to 0, `center + width/2` to 1, clipped. float32.

    Works in any unit (0..1 display pixels, or DICOM modality values in the reader).
    """
    values = np.asarray(pixels)
    work = np.float64 if values.dtype == np.float64 else np.float32  # DICOM values may exceed float32
    width = max(float(width), 1e-6)
    low = float(center) - width / 2.0
    out = (values.astype(work, copy=False) - work(low)) * work(1.0 / width)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def auto_window(pixels: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.0
                ) -> tuple[float, float]:
    """(center, width) spanning the 1st..99th percentile of the pixel values (on a subsample, for speed)."""
    a = np.asarray(pixels)
    step = max(1, max(a.shape[:2]) // _AUTO_WINDOW_SAMPLE)
    low, high = np.percentile(a[::step, ::step], [low_percentile, high_percentile])
    width = max(float(high - low), 1e-3)
    return float(low) + width / 2.0, width


def invert(pixels: np.ndarray) -> np.ndarray:
    """Negative of a 0..1 image."""
    return (np.float32(1.0) - np.asarray(pixels, dtype=np.float32)).astype(np.float32, copy=False)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """0..1 floats -> uint8 0..255 (rounded, clipped), C-contiguous."""
    scaled = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)
    return np.ascontiguousarray(scaled.astype(np.uint8))


@lru_cache(maxsize=16)
def colormap_table(cmap_name: str) -> np.ndarray:
    """(256, 3) uint8 RGB lookup table of a matplotlib colormap ('jet', 'inferno', 'turbo', ...)."""
    from matplotlib import colormaps  # lazy: matplotlib import is ~0.3 s and only needed for heatmaps

    try:
        cmap = colormaps[cmap_name]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap_name!r}") from None
    table = cmap(np.linspace(0.0, 1.0, 256))[:, :3]
    table = (table * 255.0 + 0.5).astype(np.uint8)
    table.setflags(write=False)
    return table


def colorize(map01: np.ndarray, cmap_name: str = "jet") -> np.ndarray:
    """A 0..1 map -> uint8 RGB (rows, cols, 3) through a matplotlib colormap."""
    return colormap_table(cmap_name)[to_uint8(map01)]


def overlay(gray01: np.ndarray, heat01: np.ndarray, alpha: float = 0.4, cmap_name: str = "jet") -> np.ndarray:
    """Heatmap blended over a grayscale image -> uint8 RGB at the image's size.

    A heatmap of another size (e.g. the conv grid) is resized to the image with bilinear interpolation.
    """
    gray = np.asarray(gray01, dtype=np.float32)
    heat = np.asarray(heat01, dtype=np.float32)
    if heat.shape != gray.shape:
        import cv2  # lazy: only needed when sizes differ

        heat = cv2.resize(heat, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    alpha = float(np.clip(alpha, 0.0, 1.0))
    base = np.repeat(np.clip(gray, 0.0, 1.0)[:, :, None] * np.float32(255.0), 3, axis=2)
    blended = base * np.float32(1.0 - alpha) + colorize(heat, cmap_name).astype(np.float32) * np.float32(alpha)
    return np.ascontiguousarray((blended + np.float32(0.5)).astype(np.uint8))
