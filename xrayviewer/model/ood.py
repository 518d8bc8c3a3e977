"""Out-of-distribution score: "is this a frontal chest radiograph like the ones the model was trained on?"

Mahalanobis distance of the pooled base features (the ones the head sees) to the training images' features, with a
Ledoit-Wolf shrinkage covariance (more feature dimensions than training images). Features are square-rooted first:
pooled ReLU activations are skewed, and the root makes them closer to the Gaussian the distance assumes.
The threshold is a high quantile of *held-out* in-distribution scores (cross-fitting: each fold scored by statistics
fitted without it), so the false-alarm rate on new radiographs is about 1 - quantile, not an optimistic 0.
Stored in a bundle as `ood.npz` + `model.json["ood"]`; no TensorFlow here.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

METHOD = "mahalanobis-ledoitwolf-sqrt"
OOD_FILE = "ood.npz"
DEFAULT_QUANTILE = 0.99


class OODError(Exception):
    """OOD statistics that cannot be fitted or read; `str()` says why."""


def _transform(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise OODError(f"features must be a 2-D array (n, D), got shape {features.shape}")
    return np.sqrt(np.clip(features, 0.0, None))


def _fit_gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf(assume_centered=False).fit(x)
    return lw.location_.astype(np.float64), lw.precision_.astype(np.float64)


def _distance(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    centred = x - mean
    squared = np.einsum("ij,jk,ik->i", centred, precision, centred)
    return np.sqrt(np.clip(squared, 0.0, None))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class OODStats:
    """Gaussian statistics of the training features plus the alarm threshold. Higher score = more unusual."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float = DEFAULT_QUANTILE
    n_train: int = 0
    method: str = METHOD

    def score(self, features: np.ndarray) -> np.ndarray:
        """(n, D) pooled features -> (n,) distances (a single (D,) vector gives a 1-element array)."""
        features = np.asarray(features, np.float64)
        if features.ndim == 1:
            features = features[None, :]
        if features.shape[1] != self.mean.shape[0]:
            raise OODError(f"features have {features.shape[1]} dimensions; these statistics expect "
                           f"{self.mean.shape[0]} (a different base model?)")
        return _distance(_transform(features), self.mean, self.precision)

    def is_ood(self, scores: np.ndarray | float) -> np.ndarray:
        """True where the score is above the threshold: "not a chest X-ray?" — the prediction is unreliable."""
        return np.asarray(scores, np.float64) > self.threshold

    def save(self, target: str | os.PathLike) -> dict[str, Any]:
        """Write `ood.npz` (into a bundle folder, or to an explicit `*.npz` path); return the model.json["ood"] entry."""
        target = Path(target)
        path = target if target.suffix == ".npz" else target / OOD_FILE
        with open(path, "wb") as f:
            np.savez(f, mean=self.mean.astype(np.float32), precision=self.precision.astype(np.float32),
                     threshold=np.float64(self.threshold), quantile=np.float64(self.quantile),
                     n_train=np.int64(self.n_train), method=np.array(self.method))
        return {"method": self.method, "file": path.name, "sha256": _sha256(path), "threshold": float(self.threshold),
                "quantile": float(self.quantile), "n_train": int(self.n_train)}

    @classmethod
    def load(cls, folder: str | os.PathLike, meta: dict[str, Any] | None = None) -> "OODStats":
        """Read the statistics a bundle's model.json["ood"] entry points to (default `ood.npz`)."""
        meta = meta or {}
        path = Path(folder) / str(meta.get("file") or OOD_FILE)
        try:
            with np.load(path, allow_pickle=False) as z:
                mean, precision = z["mean"].astype(np.float64), z["precision"].astype(np.float64)
                threshold = float(meta.get("threshold", z["threshold"]))
                stats = cls(mean, precision, threshold, float(z["quantile"]), int(z["n_train"]), str(z["method"]))
        except (OSError, KeyError, ValueError) as err:
            raise OODError(f"{path} is not readable OOD statistics ({err})") from None
        if stats.method != METHOD:
            raise OODError(f"{path}: unknown OOD method {stats.method!r} (this version knows {METHOD})")
        if mean.ndim != 1 or precision.shape != (mean.shape[0], mean.shape[0]) or not np.isfinite(threshold):
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
    threshold = float(np.quantile(held_out, quantile))
    return OODStats(mean, precision, threshold, quantile, n)


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
