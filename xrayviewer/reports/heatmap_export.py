"""Heatmap PNGs: the overlay as 8-bit RGB and the raw map as 16-bit grayscale (0..65535 = 0..1), at image size."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

U16_MAX = 65535


def heatmap_to_uint16(heatmap: np.ndarray) -> np.ndarray:
    """0..1 float map -> uint16 (rounded, so a read-back is within 0.5/65535 of the map)."""
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0)
    return np.rint(np.clip(h, 0.0, 1.0) * U16_MAX).astype(np.uint16)


def _write_png(image: np.ndarray, path: str | Path) -> Path:
    """PNG via imencode + an atomic rename (cv2.imwrite fails on non-ASCII paths on some platforms)."""
    path = Path(path)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode a PNG for {path.name}")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data.tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_heatmap_png16(heatmap: np.ndarray, path: str | Path) -> Path:
    """The raw 2-D map as a 16-bit grayscale PNG."""
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise ValueError(f"a heatmap is 2-D, got shape {heatmap.shape}")
    return _write_png(heatmap_to_uint16(heatmap), path)


def read_heatmap_png16(path: str | Path) -> np.ndarray:
    """Inverse of write_heatmap_png16: float32 0..1."""
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None or image.dtype != np.uint16 or image.ndim != 2:
        raise ValueError(f"{Path(path).name} is not a 16-bit grayscale heatmap PNG")
    return image.astype(np.float32) / U16_MAX


def write_rgb_png(rgb: np.ndarray, path: str | Path) -> Path:
    """An (rows, cols, 3) uint8 RGB image as PNG."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"an overlay is uint8 (rows, cols, 3), got {rgb.dtype} {rgb.shape}")
    return _write_png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), path)


def raw_map_path(overlay_path: str | Path) -> Path:
    """Where the raw map goes beside an overlay: `x.png` -> `x-raw16.png`."""
    p = Path(overlay_path)
    return p.with_name(f"{p.stem}-raw16.png")


def export_heatmap(pixels: np.ndarray, heatmap: np.ndarray, out_overlay: str | Path,
                   out_raw: str | Path | None = None, *, alpha: float = 0.4) -> list[Path]:
    """Write the overlay (8-bit RGB, as the viewer blends it) and the raw map (16-bit), both at the image's size.
    `out_raw` defaults to `<overlay>-raw16.png`. Returns the paths written."""
    from xrayviewer.imaging.display import overlay

    pixels = np.asarray(pixels, np.float32)
    heat = np.asarray(heatmap, np.float32)
    if heat.shape != pixels.shape:
        heat = cv2.resize(heat, (pixels.shape[1], pixels.shape[0]), interpolation=cv2.INTER_LINEAR)
    overlay_path = write_rgb_png(overlay(pixels, heat, alpha), out_overlay)
    raw_path = write_heatmap_png16(heat, out_raw if out_raw is not None else raw_map_path(out_overlay))
    return [overlay_path, raw_path]


def export_heatmap_for_file(path: str | Path, classifier, out_overlay: str | Path, out_raw: str | Path | None = None,
                            *, alpha: float = 0.4, **known) -> list[Path]:
    """Read and analyse one image (skipping what `known` already holds: radiograph, analysis, class_index,
    heatmap; see reports.runs) and export its heatmap PNGs at the image's size."""
    from xrayviewer.reports.runs import analyze_file

    case = analyze_file(path, classifier, **known)
    return export_heatmap(case.radiograph.pixels, case.heatmap, out_overlay, out_raw, alpha=alpha)
