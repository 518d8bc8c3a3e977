"""Out-of-distribution score: "is this a frontal chest radiograph like the ones the model was trained on?"

Mahalanobis distance of the pooled base features (the ones the head sees) to the training images' features, with a
Ledoit-Wolf shrinkage covariance (more feature dimensions than training images). Features are square-rooted first:
pooled ReLU activations are skewed, and the root makes them closer to the Gaussian the distance assumes.
The threshold is a high quantile of *held-out* in-distribution scores (cross-fitting: each fold scored by statistics
fitted without it), so the false-alarm rate on new radiographs is about 1 - quantile, not an optimistic 0.

Pooled features cannot tell an inverted radiograph from a real one (global average pooling of VGG edge filters is
nearly polarity-blind: only ~10 % of inverted ../shared radiographs fell outside). So, when the model inputs are
given, a fixed brightness-layout check joins in: in a positive frontal chest film the mediastinum and spine (centre
strip) are brighter than the lung fields beside them. On ../shared that difference is > 0.004 for 98 % of the real
radiographs and < -0.004 for 98 % of the inverted ones.

`score()` is relative: max(distance / distance threshold, polarity score); above 1 means "not a chest X-ray?".
Stored in a bundle as `ood.npz` + `model.json["ood"]` (threshold 1.0); no TensorFlow here.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

METHOD = "mahalanobis-ledoitwolf-sqrt+polarity-v1"
OOD_FILE = "ood.npz"
DEFAULT_QUANTILE = 0.99
POLARITY_SCALE = 0.05   # centre-minus-sides brightness (0..1 units) per unit of score; 0 difference scores 1.0


class OODError(Exception):
    """OOD statistics that cannot be fitted or read; `str()` says why."""


def _transform(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise OODError(f"features must be a 2-D array (n, D), got shape {features.shape}")
    return np.sqrt(np.clip(features, 0.0, None))


def _fit_gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Ledoit-Wolf shrunk precision, as sklearn's LedoitWolf computes them (a test compares), with the
    pseudo-inverse done by NumPy: SciPy's eigh holds the GIL, and for 512 features froze the GUI thread ~0.2 s
    while a training worker fitted these statistics."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    x = np.asarray(x, np.float64)
    location = x.mean(axis=0)
    centred = x - location
    shrinkage = ledoit_wolf_shrinkage(centred, assume_centered=True)
    n, p = centred.shape
    covariance = (centred.T @ centred) / n
    mu = np.trace(covariance) / p
    covariance *= 1.0 - shrinkage
    covariance.flat[::p + 1] += shrinkage * mu
    values, vectors = np.linalg.eigh(covariance)          # NumPy's LAPACK call releases the GIL
    cutoff = values.max(initial=0.0) * p * np.finfo(np.float64).eps
    inverse = np.where(values > cutoff, 1.0 / np.where(values > cutoff, values, 1.0), 0.0)
    return location, (vectors * inverse) @ vectors.T


def _distance(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    centred = x - mean
    squared = np.einsum("ij,jk,ik->i", centred, precision, centred)
    return np.sqrt(np.clip(squared, 0.0, None))


def polarity_score(images: np.ndarray) -> np.ndarray:
    """(n, rows, cols[, channels]) images of any offset -> (n,) score, above 1 when the centre strip is darker than
    the lung fields beside it (an inverted film, or no chest at all). Model inputs work: offsets cancel."""
    import cv2

    images = np.asarray(images, np.float32)
    if images.ndim == 4:
        images = images.mean(axis=3)
    out = np.empty(len(images))
    for i, image in enumerate(images):
        small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA) / 255.0
        band = small[6:26]                          # rows 20-80 %: lungs and mediastinum, no neck or abdomen
        centre = band[:, 13:19].mean()
        sides = np.concatenate([band[:, 4:11].ravel(), band[:, 21:28].ravel()]).mean()
        out[i] = 1.0 - (centre - sides) / POLARITY_SCALE
    return out


@dataclass
class OODStats:
    """Gaussian statistics of the training features and the distance threshold. Higher score = more unusual."""

    mean: np.ndarray
    precision: np.ndarray
    distance_threshold: float
    quantile: float = DEFAULT_QUANTILE
    n_train: int = 0
    method: str = METHOD
    threshold: float = 1.0          # on the relative score

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(n, D) pooled features -> (n,) Mahalanobis distances (a single (D,) vector gives a 1-element array)."""
        features = np.asarray(features, np.float64)
        if features.ndim == 1:
            features = features[None, :]
        if features.shape[1] != self.mean.shape[0]:
            raise OODError(f"features have {features.shape[1]} dimensions; these statistics expect "
                           f"{self.mean.shape[0]} (a different base model?)")
        return _distance(_transform(features), self.mean, self.precision)

    def score(self, features: np.ndarray, images: np.ndarray | None = None) -> np.ndarray:
        """Relative score (n,): distance / distance threshold, raised by the polarity check when the model inputs
        `images` (n, rows, cols, 3) are given. Above `threshold` (1.0): "not a chest X-ray?"."""
        relative = self.distance(features) / self.distance_threshold
        if images is not None:
            relative = np.maximum(relative, polarity_score(images))
        return relative

    def is_ood(self, scores: np.ndarray | float) -> np.ndarray:
        """True where the score is above the threshold: "not a chest X-ray?" — the prediction is unreliable."""
        return np.asarray(scores, np.float64) > self.threshold

    def save(self, target: str | os.PathLike) -> dict[str, Any]:
        """Write `ood.npz` (into a bundle folder, or to an explicit `*.npz` path); return the model.json["ood"] entry."""
        from xrayviewer.imaging.hashing import file_sha256

        target = Path(target)
        path = target if target.suffix == ".npz" else target / OOD_FILE
        with open(path, "wb") as f:
            np.savez(f, mean=self.mean.astype(np.float32), precision=self.precision.astype(np.float32),
                     distance_threshold=np.float64(self.distance_threshold), quantile=np.float64(self.quantile),
                     n_train=np.int64(self.n_train), method=np.array(self.method))
        return {"method": self.method, "file": path.name, "sha256": file_sha256(path, memo=False),
                "threshold": float(self.threshold), "distance_threshold": float(self.distance_threshold),
                "quantile": float(self.quantile), "n_train": int(self.n_train)}

    @classmethod
    def load(cls, folder: str | os.PathLike, meta: dict[str, Any] | None = None) -> "OODStats":
        """Read the statistics a bundle's model.json["ood"] entry points to (default `ood.npz`)."""
        meta = meta or {}
        path = Path(folder) / str(meta.get("file") or OOD_FILE)
        try:
            with np.load(path, allow_pickle=False) as z:
                mean, precision = z["mean"].astype(np.float64), z["precision"].astype(np.float64)
                distance_threshold = float(z["distance_threshold"])
                threshold = float(meta.get("threshold", 1.0))
                stats = cls(mean, precision, distance_threshold, float(z["quantile"]), int(z["n_train"]),
                            str(z["method"]), threshold)
        except (OSError, KeyError, ValueError) as err:
            raise OODError(f"{path} is not readable OOD statistics ({err})") from None
        if stats.method != METHOD:
            raise OODError(f"{path}: unknown OOD method {stats.method!r} (this version knows {METHOD})")
        if (mean.ndim != 1 or precision.shape != (mean.shape[0], mean.shape[0]) or not np.isfinite(threshold)
                or not distance_threshold > 0):
            raise OODError(f"{path}: inconsistent OOD statistics (mean {mean.shape}, precision {precision.shape})")
        return stats


def fit_ood(train_features: np.ndarray, *, groups: Sequence[Any] | None = None, quantile: float = DEFAULT_QUANTILE,
            folds: int = 5, seed: int = 0) -> OODStats:
    """Fit on the training images' pooled features (n, D); threshold from cross-fitted held-out scores.

    `groups` (e.g. patient ids) keeps a patient's images in one fold, so the held-out scores are honest.
    """
    from sklearn.model_selection import GroupKFold, KFold

    x = _transform(train_features)
    n = len(x)
    if n < 10:
        raise OODError(f"OOD statistics need at least 10 training images (got {n})")
    if not np.all(np.isfinite(x)):
        raise OODError("training features contain NaN or infinite values")
    held_out = np.empty(n)
    if groups is not None and len(set(groups)) >= folds:
        splits = GroupKFold(n_splits=folds).split(x, groups=np.asarray(groups))
    else:
        splits = KFold(n_splits=min(folds, n), shuffle=True, random_state=seed).split(x)
    for fit_idx, test_idx in splits:
        mean, precision = _fit_gaussian(x[fit_idx])
        held_out[test_idx] = _distance(x[test_idx], mean, precision)
    mean, precision = _fit_gaussian(x)
    return OODStats(mean, precision, float(np.quantile(held_out, quantile)), quantile, n)


def add_ood_to_bundle(bundle_dir: str | os.PathLike, features: np.ndarray, *,
                      groups: Sequence[Any] | None = None, quantile: float = DEFAULT_QUANTILE) -> dict[str, Any]:
    """Fit OOD statistics on `features` (the bundle's training images) and add them to an existing bundle.

    Writes `ood.npz`, then replaces model.json atomically with its "ood" entry set. Returns that entry.
    """
    folder = Path(bundle_dir)
    meta_path = folder / "model.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    stats = fit_ood(features, groups=groups, quantile=quantile)
    entry = stats.save(folder)
    meta["ood"] = entry
    fd, tmp = tempfile.mkstemp(prefix=".model.json.", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, meta_path)
    return entry
