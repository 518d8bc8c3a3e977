"""The in-memory radiograph every part of the app passes around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Radiograph:
    """A decoded radiograph.

    pixels: float32, 2-D (rows, cols), 0..1, display-ready grayscale where higher = brighter
            (MONOCHROME1 and inverted palettes are already flipped; VOI LUT / window already applied).
    meta:   format ("PNG", "JPEG", "DICOM", ...), bit_depth, original_shape (rows, cols as stored),
            photometric ("MONOCHROME2", "RGB", "P", ...), window_center / window_width (DICOM, if any),
            notes (list of str: anything a person should know, e.g. "multi-frame: first of 3 frames shown"),
            and for DICOM a "dicom" dict of the tags a viewer shows (PatientID, StudyDate, Modality, ...).
    path:   the file it came from ("" for in-memory images).
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pixels.shape[:2])  # type: ignore[return-value]

    @classmethod
    def from_array(cls, array: np.ndarray, path: str = "", **meta: Any) -> "Radiograph":
        """Wrap an array (any numeric dtype, 2-D, or 3-D with 3 channels) as a 0..1 grayscale radiograph."""
        a = np.asarray(array)
        if a.ndim == 3:
            a = a[..., :3].mean(axis=2)
        if a.dtype == np.uint8:
            px = a.astype(np.float32) / 255.0
        elif a.dtype == np.uint16:
            px = a.astype(np.float32) / 65535.0
        else:
            px = np.clip(a.astype(np.float32), 0.0, 1.0)
        meta.setdefault("format", "array")
        meta.setdefault("original_shape", tuple(px.shape))
        meta.setdefault("notes", [])
        return cls(np.ascontiguousarray(px, dtype=np.float32), meta, path)
