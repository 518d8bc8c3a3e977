"""Small shared pieces of the robustness suite (tests/test_robustness*.py, tests/test_fuzz*.py).

A tiny model bundle (the `small-cnn` base at 64×64, full weights) stands in for the shipped VGG16 model wherever
the test is about what happens around a model — refusing files, switching models, saving — so the suite does not pay
for VGG16 start-ups. Synthetic radiographs are written with OpenCV so every test has a twin that runs without
../shared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_INPUT = (64, 64)


def build_tiny_model(n_classes: int = 2, seed: int = 0):
    """A flat classifier with the app's layer names on the small-cnn base: builds in well under a second."""
    import keras

    from xrayviewer.model.architecture import build_classifier

    keras.utils.set_random_seed(seed)
    return build_classifier("small-cnn", n_classes, {"pooling": "avg", "units": 8, "dropout": 0.0}, TINY_INPUT)


def save_tiny_bundle(dest: Path, model=None, *, name: str | None = None, version: str = "1",
                     classes: tuple[str, ...] = ("normal", "pneumonia")) -> Path:
    from xrayviewer.model.bundle import save_bundle

    model = model if model is not None else build_tiny_model(len(classes))
    meta = {"name": name or dest.name, "version": version, "classes": list(classes), "base": {"id": "small-cnn"}}
    return save_bundle(dest, meta, model, head_only=False)


def synthetic_radiograph(seed: int, shape: tuple[int, int] = (160, 128)) -> np.ndarray:
    """uint8 chest-like picture: bright mediastinum and ribs, two dark lung fields, seeded noise."""
    import cv2

    rng = np.random.default_rng(seed)
    rows, cols = shape
    img = np.full(shape, 170, np.uint8)
    for side in (-1, 1):
        center = (cols // 2 + side * cols // 4, rows // 2)
        cv2.ellipse(img, center, (cols // 6, rows // 3), 0, 0, 360, int(rng.integers(40, 90)), -1)
    for y in range(rows // 5, rows - rows // 5, max(rows // 12, 4)):
        cv2.line(img, (cols // 8, y), (cols - cols // 8, y + rows // 20), 200, 1)
    noise = rng.normal(0, 8, shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def write_synthetic_images(folder: Path, count: int, *, prefix: str = "synthetic", seed: int = 0,
                           shape: tuple[int, int] = (160, 128)) -> list[Path]:
    """`count` PNG/JPEG radiographs (alternating) in `folder`; returns their paths in natural order."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}_{i:04d}.{'png' if i % 2 == 0 else 'jpg'}"
        cv2.imwrite(str(path), synthetic_radiograph(seed + i, shape))
        paths.append(path)
    return paths


def real_sample(shared_data: Path, count: int, *, formats: tuple[str, ...] = ("PNG", "JPEG")) -> list[Path]:
    """A spread of real radiographs from ../shared (every source and format), deterministic."""
    import csv

    with open(shared_data / "cxr" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [r for r in rows if r["format"] in formats]
    by_source: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["path"]):
        by_source.setdefault(f"{row['source']}/{row['mode']}", []).append(row)
    picked: list[Path] = []
    while len(picked) < count and any(by_source.values()):
        for group in sorted(by_source):
            if by_source[group] and len(picked) < count:
                picked.append(shared_data / "cxr" / by_source[group].pop(0)["path"])
    return picked
