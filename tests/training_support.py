"""Synthetic training data shared by the training tests: bright disc vs dark disc on noise."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_disc_dataset(root: Path, patients_per_class: int = 6, images_per_patient: int = 2, size: int = 96) -> Path:
    """root/bright and root/dark, named syn_pNN_k.png so the default file-name pattern finds patient syn_pNN."""
    rng = np.random.default_rng(7)
    patient = 0
    for label, disc in (("bright", 0.95), ("dark", 0.02)):
        (root / label).mkdir(parents=True)
        for _ in range(patients_per_class):
            patient += 1
            for k in range(images_per_patient):
                img = np.clip(rng.normal(0.35, 0.08, (size, size)), 0, 1)
                centre = tuple(int(v) for v in rng.integers(size // 3, 2 * size // 3, 2))
                cv2.circle(img, centre, int(rng.integers(size // 6, size // 4)), disc, -1)
                cv2.imwrite(str(root / label / f"syn_p{patient:02d}_{k}.png"), (img * 255).astype(np.uint8))
    return root
