"""Feature maps before the last conv block, computed once per image and variant, cached in memory and on disk.

Fine-tuning the last conv block (block4 of the default VGG16-to-block4 base) leaves the blocks before it frozen,
and their output does not change from epoch to epoch. So, like the pooled features of head-only training
(features.py, whose cache, augmentation variants and preprocessing this reuses), each (file content, base,
preprocessing, augmentation, variant, cut layer) runs through the frozen front once; every epoch then trains only
the tail (last block + pooling + head) on the cached maps:

    <cache_dir>/maps/<base_id>/<preprocessing>-<size>/<cut layer>-<augmentation key>/<file sha256>_v<k>.npy

Maps are stored as float16 (28x28x256 for a 224x224 input: 392 KiB a map instead of 784 KiB); the effect on the
logits is measured in benchmarks/bench_training.py and tests/test_training_finetune.py.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from xrayviewer.training.features import EXTRACT_BATCH, FeatureExtractor

MAPS_DTYPE = np.float16
FLOAT16_MAX = float(np.finfo(np.float16).max)
# In-memory maps of all extractors in the process: 256 MiB at most (~650 maps at 224x224). The app process keeps
# them after a run; the disk cache reads a map back in well under a millisecond, so more would buy little.
_MEMORY_BYTES = 256 << 20
_MEMORY: OrderedDict[tuple, np.ndarray] = OrderedDict()
_MEMORY_LOCK = threading.Lock()
_memory_used = 0


class _FrontBase:
    """The frozen base up to `cut_layer` as one compiled function with a fixed (EXTRACT_BATCH, rows, cols, 3)
    signature (the same batch as the pooled features, so a cancel waits for at most one short call)."""

    def __init__(self, base_id: str, input_size: tuple[int, int], cut_layer: str):
        import keras
        import tensorflow as tf

        from xrayviewer.model.backbone import build_base

        inputs, base_out, _spec = build_base(base_id, input_size)
        model = keras.Model(inputs, keras.Model(inputs, base_out).get_layer(cut_layer).output, name="front")
        rows, cols = input_size
        self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                               input_signature=[tf.TensorSpec((EXTRACT_BATCH, rows, cols, 3), tf.float32)])
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n < EXTRACT_BATCH:
            batch = np.concatenate([batch, np.zeros((EXTRACT_BATCH - n, *batch.shape[1:]), np.float32)])
        with self.lock:
            return self._fn(batch).numpy()[:n]


_FRONTS: dict[tuple, _FrontBase] = {}
_FRONTS_LOCK = threading.Lock()


def _front(base_id: str, input_size: tuple[int, int], cut_layer: str) -> _FrontBase:
    key = (base_id, tuple(input_size), cut_layer)
    with _FRONTS_LOCK:
        if key not in _FRONTS:
            _FRONTS[key] = _FrontBase(base_id, tuple(input_size), cut_layer)
        return _FRONTS[key]


class MapExtractor(FeatureExtractor):
    """(n, variants, h, w, c) float16 maps at `cut_layer` (default: the base's `finetune_cut`) for files."""

    def __init__(self, base_id: str | None = None, *, cut_layer: str | None = None, dtype=MAPS_DTYPE, **kwargs):
        from xrayviewer.model.backbone import available_bases

        from xrayviewer.paths import cache_dir

        kwargs["cache_root"] = kwargs.get("cache_root") or cache_dir() / "maps"
        super().__init__(base_id, **kwargs)
        spec = available_bases().get(self.base_id)
        self.cut_layer = cut_layer or (spec.finetune_cut if spec else None)
        if not self.cut_layer:
            raise ValueError(f"base {self.base_id!r} has no layer to cut at before its last conv block")
        self.dtype = dtype

    @property
    def cache_folder(self) -> Path:
        size = f"{self.input_size[0]}x{self.input_size[1]}"
        dtype = "" if self.dtype == MAPS_DTYPE else f"-{np.dtype(self.dtype).name}"
        return (self.cache_root / self.base_id / f"{self.preprocessing}-{size}"
                / f"{self.cut_layer}{dtype}-{self.augmentation.key()}")

    def _key(self, sha: str, variant: int) -> tuple:
        return ("maps", self.cut_layer, np.dtype(self.dtype).name, *super()._key(sha, variant))

    def _remember(self, key: tuple, vector: np.ndarray) -> None:
        global _memory_used
        with _MEMORY_LOCK:
            old = _MEMORY.pop(key, None)
            _memory_used += vector.nbytes - (old.nbytes if old is not None else 0)
            _MEMORY[key] = vector
            while _memory_used > _MEMORY_BYTES and len(_MEMORY) > 1:
                _memory_used -= _MEMORY.popitem(last=False)[1].nbytes   # the oldest first

    def _lookup(self, sha: str, variant: int) -> np.ndarray | None:
        with _MEMORY_LOCK:
            hit = _MEMORY.get(self._key(sha, variant))
        return hit if hit is not None else self._lookup_disk(sha, variant)

    def _lookup_disk(self, sha: str, variant: int) -> np.ndarray | None:
        if not self.use_disk_cache:
            return None
        try:
            hit = np.load(self._disk_path(sha, variant), allow_pickle=False)
        except (OSError, ValueError):
            return None   # absent or damaged: recompute
        if hit.ndim != 3:
            return None
        hit = hit.astype(self.dtype, copy=False)
        self._remember(self._key(sha, variant), hit)
        return hit

    def _run_base(self, batch: np.ndarray) -> np.ndarray:
        maps = _front(self.base_id, self.input_size, self.cut_layer)(batch)
        # ReLU maps are >= 0; clipping keeps a (never seen) value above float16's range finite
        return np.minimum(maps, FLOAT16_MAX) if self.dtype == np.float16 else maps


def clear_memory_cache() -> None:
    """Forget in-memory maps (the disk cache stays)."""
    global _memory_used
    with _MEMORY_LOCK:
        _MEMORY.clear()
        _memory_used = 0
