"""Synthetic images that are NOT frontal chest radiographs (no internet: drawn with numpy/cv2), for the OOD tests.

Each generator takes a numpy Generator and returns a Radiograph. `OOD_KINDS` maps a kind name to its generator;
inverted radiographs are made from real ones in the tests.
"""

from __future__ import annotations

import cv2
import numpy as np

from xrayviewer.imaging.radiograph import Radiograph


def _size(rng) -> tuple[int, int]:
    return int(rng.integers(300, 700)), int(rng.integers(300, 800))


def natural_photo(rng) -> Radiograph:
    """Sky-ground gradients, blurred multi-scale texture and coloured objects, like an outdoor snapshot."""
    rows, cols = _size(rng)
    yy = np.linspace(0, 1, rows)[:, None, None]
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = np.broadcast_to(top * (1 - yy) + bottom * yy, (rows, cols, 3)).copy()
    horizon = int(rng.uniform(0.3, 0.7) * rows)
    img[horizon:] = img[horizon:] * 0.4 + rng.uniform(0, 255, 3) * 0.6
    for scale in (4, 16, 64):
        noise = cv2.resize(rng.normal(0, 1, (max(2, rows // scale), max(2, cols // scale), 3)).astype(np.float32),
                           (cols, rows), interpolation=cv2.INTER_CUBIC)
        img += noise * rng.uniform(5, 25)
    for _ in range(int(rng.integers(3, 12))):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        center = (int(rng.integers(0, cols)), int(rng.integers(0, rows)))
        if rng.random() < 0.5:
            cv2.circle(img, center, int(rng.integers(10, min(rows, cols) // 3)), color, -1)
        else:
            pts = rng.integers(0, [cols, rows], (int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], color)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    return Radiograph.from_array(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))  # as a reader decodes a colour photo


def drawing(rng) -> Radiograph:
    """Line art on paper: strokes, circles, curves."""
    rows, cols = _size(rng)
    img = np.full((rows, cols), int(rng.integers(220, 256)), np.uint8)
    for _ in range(int(rng.integers(8, 30))):
        ink = int(rng.integers(0, 80))
        thickness = int(rng.integers(1, 5))
        shape = rng.integers(0, 3)
        if shape == 0:
            p1 = tuple(int(v) for v in rng.integers(0, [cols, rows]))
            p2 = tuple(int(v) for v in rng.integers(0, [cols, rows]))
            cv2.line(img, p1, p2, ink, thickness)
        elif shape == 1:
            center = tuple(int(v) for v in rng.integers(0, [cols, rows]))
            cv2.circle(img, center, int(rng.integers(5, min(rows, cols) // 3)), ink, thickness)
        else:
            pts = np.cumsum(rng.normal(0, 20, (20, 2)), axis=0) + rng.integers(0, [cols, rows])
            cv2.polylines(img, [pts.astype(np.int32)], False, ink, thickness)
    return Radiograph.from_array(img)


def text_screenshot(rng) -> Radiograph:
    """A page of text (light or dark theme), like a screenshot of a document or terminal."""
    rows, cols = _size(rng)
    dark = rng.random() < 0.3
    paper, ink = (30, 220) if dark else (int(rng.integers(230, 256)), int(rng.integers(0, 60)))
    img = np.full((rows, cols), paper, np.uint8)
    words = ["patient", "report", "the", "chest", "result", "model", "data", "2020", "COVID-19", "normal", "x-ray",
             "def", "return", "import", "numpy", "figure", "table", "value", "=", "0.93"]
    scale = rng.uniform(0.4, 0.9)
    line_height = int(30 * scale) + 6
    for y in range(line_height, rows - 5, line_height):
        text = " ".join(rng.choice(words, int(rng.integers(3, 12))))
        cv2.putText(img, text, (int(rng.integers(5, 30)), y), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)
    return Radiograph.from_array(img)


def blank(rng) -> Radiograph:
    rows, cols = _size(rng)
    return Radiograph.from_array(np.full((rows, cols), rng.uniform(0, 1), np.float32))


def noise(rng) -> Radiograph:
    """Uniform, Gaussian, salt-and-pepper or smoothed noise."""
    rows, cols = _size(rng)
    kind = rng.integers(0, 4)
    if kind == 0:
        img = rng.uniform(0, 1, (rows, cols))
    elif kind == 1:
        img = rng.normal(0.5, 0.2, (rows, cols))
    elif kind == 2:
        img = (rng.random((rows, cols)) < 0.5).astype(np.float32)
    else:
        img = cv2.GaussianBlur(rng.uniform(0, 1, (rows, cols)).astype(np.float32), (0, 0), rng.uniform(1, 6))
        img = (img - img.min()) / max(float(np.ptp(img)), 1e-6)
    return Radiograph.from_array(np.clip(img, 0, 1).astype(np.float32))


def ct_slice(rng) -> Radiograph:
    """Axial CT-like slice: black air, an oval body with a bright rim, dark lungs, bright spine, the table below."""
    size = int(rng.integers(400, 600))
    img = np.zeros((size, size), np.float32)
    c = size // 2
    ax, ay = int(size * rng.uniform(0.38, 0.45)), int(size * rng.uniform(0.28, 0.35))
    cv2.ellipse(img, (c, c), (ax, ay), 0, 0, 360, 0.55, -1)                     # soft tissue
    cv2.ellipse(img, (c, c), (ax, ay), 0, 0, 360, 0.85, int(size * 0.015))      # bright ring (skin/ribs)
    for side in (-1, 1):                                                        # lungs
        cv2.ellipse(img, (c + side * int(ax * 0.45), c - int(ay * 0.05)), (int(ax * 0.35), int(ay * 0.7)),
                    0, 0, 360, 0.08, -1)
    cv2.circle(img, (c, c + int(ay * 0.6)), int(size * 0.05), 0.95, -1)         # vertebra
    cv2.circle(img, (c - int(ax * 0.1), c + int(ay * 0.1)), int(size * 0.09), 0.62, -1)  # heart
    cv2.circle(img, (c + int(ax * 0.05), c - int(ay * 0.25)), int(size * 0.03), 0.75, -1)  # aorta
    cv2.rectangle(img, (c - ax, c + ay + 15), (c + ax, c + ay + 25), 0.5, -1)  # table
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return Radiograph.from_array(np.clip(cv2.GaussianBlur(img, (0, 0), 1.2), 0, 1))


OOD_KINDS = {"natural photo": natural_photo, "drawing": drawing, "text screenshot": text_screenshot,
             "blank": blank, "noise": noise, "CT-like slice": ct_slice}


def inverted(radiograph: Radiograph) -> Radiograph:
    return Radiograph(1.0 - radiograph.pixels, dict(radiograph.meta), radiograph.path)
