"""Pooled base features, computed once per image and augmentation variant, cached in memory and on disk.

The frozen conv base is by far the expensive part of training, and it gives the same output for the same input.
So each (file content, base, preprocessing, pooling, augmentation, variant) is run through the base once, through
one compiled `tf.function` with a fixed batch signature, and the pooled vector (the `head_pool` output) is kept:

    <cache_dir>/features/<base_id>/<preprocessing>/<pooling>-<augmentation key>/<file sha256>_v<k>.npy

Variant 0 is the unaugmented image; variants 1..K-1 are random affine transforms seeded by (file hash, variant), so
the same file gets the same variants on every run and on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from xrayviewer.imaging.preprocess import PREPROCESSING_ID, to_model_input

# The compiled function's fixed batch size (the last batch is padded). Small, so that a cancel waits for at most
# one short base call (~0.6 s on a quiet 2-core machine): the conv base costs the same per image at batch 4 as at 16
# (measured 0.160 vs 0.157 s per 224x224 image), so larger batches buy nothing on a CPU.
EXTRACT_BATCH = 4


@dataclass(frozen=True)
class Augmentation:
    """Random affine transform ranges, applied to the 0..1 pixels before preprocessing.

    Horizontal flip is off by default: it swaps the heart's side, which no real PA/AP radiograph does.
    """

    rotation_deg: float = 15.0
    zoom: float = 0.10          # scale drawn from [1 - zoom, 1 + zoom]
    shear_deg: float = 8.0
    shift: float = 0.08         # fraction of the image size, each axis
    horizontal_flip: bool = False

    def key(self) -> str:
        """Short stable name of these settings, used in cache paths."""
        text = json.dumps(asdict(self), sort_keys=True)
        return "aug-" + hashlib.sha256(text.encode()).hexdigest()[:10]

    def apply(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """One random variant of `pixels` (2-D float 0..1); borders are filled by reflection."""
        rng = np.random.default_rng(seed)
        rows, cols = pixels.shape[:2]
        angle = np.deg2rad(rng.uniform(-self.rotation_deg, self.rotation_deg))
        scale = rng.uniform(1.0 - self.zoom, 1.0 + self.zoom)
        shear = np.tan(np.deg2rad(rng.uniform(-self.shear_deg, self.shear_deg)))
        tx, ty = rng.uniform(-self.shift, self.shift, size=2) * (cols, rows)
        flip = self.horizontal_flip and rng.random() < 0.5
        # Compose around the image centre: shift . rotate . shear . scale . flip
        cx, cy = cols / 2.0, rows / 2.0
        to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
        back = np.array([[1, 0, cx + tx], [0, 1, cy + ty], [0, 0, 1]], np.float64)
        rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        shr = np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]], np.float64)
        scl = np.diag([scale * (-1.0 if flip else 1.0), scale, 1.0])
        matrix = (back @ rot @ shr @ scl @ to_centre)[:2]
        out = cv2.warpAffine(pixels.astype(np.float32), matrix, (cols, rows), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
        return np.clip(out, 0.0, 1.0)


def variant_seed(file_sha256: str, variant: int) -> int:
    return int(hashlib.sha256(f"{file_sha256}:{variant}".encode()).hexdigest()[:16], 16)


@dataclass(frozen=True)
class FeatureSource:
    """What to extract features for: a file and its content hash (the cache key)."""

    path: str
    sha256: str


class _PooledBase:
    """The frozen base + pooling as one compiled function with a fixed (EXTRACT_BATCH, rows, cols, 3) signature."""

    def __init__(self, base_id: str, input_size: tuple[int, int], pooling: str):
        import keras
        import tensorflow as tf

        from xrayviewer.model.backbone import build_base

        inputs, base_out, _spec = build_base(base_id, input_size)
        pool = keras.layers.GlobalMaxPooling2D if pooling == "max" else keras.layers.GlobalAveragePooling2D
        model = keras.Model(inputs, pool(name="head_pool")(base_out), name="pooled_base")
        self.model = model
        rows, cols = input_size
        self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                               input_signature=[tf.TensorSpec((EXTRACT_BATCH, rows, cols, 3), tf.float32)])
        self.feature_dim = int(model.output.shape[-1])
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n < EXTRACT_BATCH:
            batch = np.concatenate([batch, np.zeros((EXTRACT_BATCH - n, *batch.shape[1:]), np.float32)])
        with self.lock:
            return self._fn(batch).numpy()[:n]


_BASES: dict[tuple, _PooledBase] = {}
_BASES_LOCK = threading.Lock()
_MEMORY: dict[tuple, np.ndarray] = {}        # cache key -> (D,) float32; shared by every extractor in the process
_MEMORY_LIMIT = 200_000                      # ~400 MB of 512-d vectors at most


def _pooled_base(base_id: str, input_size: tuple[int, int], pooling: str) -> _PooledBase:
    key = (base_id, tuple(input_size), pooling)
    with _BASES_LOCK:
        if key not in _BASES:
            _BASES[key] = _PooledBase(base_id, tuple(input_size), pooling)
        return _BASES[key]


class ExtractionCancelled(Exception):
    """The cancel event was set while features were being extracted."""


class FeatureExtractor:
    """Pooled features for files, from the memory cache, else the disk cache, else the base (and then cached).

    Subclasses cache another output of the base (training/maps.py: the maps before the last conv block) by
    overriding `dtype`, `cache_folder`, `_key`, `_lookup`, `_remember` and `_run_base`.
    """

    dtype = np.float32       # of what is stored and returned

    def __init__(self, base_id: str | None = None, *, input_size: tuple[int, int] = (224, 224),
                 pooling: str = "avg", preprocessing: str = PREPROCESSING_ID,
                 augmentation: Augmentation | None = None, cache_root: Path | str | None = None,
                 use_disk_cache: bool = True):
        from xrayviewer.model.backbone import BASES, DEFAULT_BASE_ID
        from xrayviewer.paths import cache_dir

        self.base_id = base_id or DEFAULT_BASE_ID
        self.input_size = tuple(input_size)
        self.pooling = pooling
        self.preprocessing = preprocessing
        self.augmentation = augmentation or Augmentation()
        self.cache_root = Path(cache_root) if cache_root else cache_dir() / "features"
        # A randomly initialised base differs in every process: its features may only live in memory, next to
        # the one base instance (kept per process) that made them.
        self.random_base = BASES[self.base_id].weights == "random" if self.base_id in BASES else False
        self.use_disk_cache = use_disk_cache and not self.random_base
        self.base_batches = 0        # batches actually run through the base (0 when everything was cached)
        self.cache_hits = 0

    @property
    def cache_folder(self) -> Path:
        size = f"{self.input_size[0]}x{self.input_size[1]}"
        return (self.cache_root / self.base_id / f"{self.preprocessing}-{size}"
                / f"{self.pooling}-{self.augmentation.key()}")

    def _key(self, sha: str, variant: int) -> tuple:
        return (self.base_id, self.input_size, self.preprocessing, self.pooling, self.augmentation.key(), sha, variant)

    def _disk_path(self, sha: str, variant: int) -> Path:
        return self.cache_folder / f"{sha}_v{variant}.npy"

    def _lookup(self, sha: str, variant: int) -> np.ndarray | None:
        key = self._key(sha, variant)
        hit = _MEMORY.get(key)
        if hit is None and self.use_disk_cache:
            path = self._disk_path(sha, variant)
            try:
                hit = np.load(path, allow_pickle=False).astype(np.float32)
            except (OSError, ValueError):
                hit = None   # absent or damaged: recompute
            if hit is not None and hit.ndim == 1:
                self._remember(key, hit)
            else:
                hit = None
        return hit

    def _remember(self, key: tuple, vector: np.ndarray) -> None:
        if len(_MEMORY) >= _MEMORY_LIMIT:
            _MEMORY.clear()
        _MEMORY[key] = vector

    def _store(self, sha: str, variant: int, vector: np.ndarray) -> None:
        self._remember(self._key(sha, variant), vector)
        if not self.use_disk_cache:
            return
        folder = self.cache_folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, vector.astype(self.dtype))
            os.replace(tmp, self._disk_path(sha, variant))
        except OSError:
            pass  # a read-only or full cache only costs speed next time

    def base_model(self):
        """The keras model (base + pooling) these features come from."""
        return _pooled_base(self.base_id, self.input_size, self.pooling).model

    def model_input(self, pixels: np.ndarray, sha: str, variant: int) -> np.ndarray:
        """Preprocessed network input of one variant (variant 0 = the image as it is)."""
        if variant > 0:
            pixels = self.augmentation.apply(pixels, variant_seed(sha, variant))
        return to_model_input(pixels, self.input_size, self.preprocessing)

    def extract(self, sources: Sequence[FeatureSource], variants: int = 1, *,
                read: Callable[[str], np.ndarray] | None = None,
                progress: Callable[[int, int], None] | None = None,
                cancel: threading.Event | None = None) -> np.ndarray:
        """(n, variants, D) float32 features. `read(path) -> 0..1 pixels` defaults to read_radiograph.

        `progress(done, total)` counts vectors (cached ones included), before the first batch and after each one.

        Raises ExtractionCancelled when `cancel` is set (checked before each image and each base call of
        EXTRACT_BATCH images, so it is seen within about a second) and whatever `read` raises for an
        unreadable file (callers check readability beforehand; discover_dataset reports unreadable files).
        """
        if read is None:
            from xrayviewer.imaging import read_radiograph

            def read(path: str) -> np.ndarray:
                return read_radiograph(path).pixels

        out: list[list[np.ndarray | None]] = [[self._lookup(s.sha256, v) for v in range(variants)] for s in sources]
        todo = [(i, v) for i, row in enumerate(out) for v, vec in enumerate(row) if vec is None]
        hits = len(sources) * variants - len(todo)
        self.cache_hits += hits
        total = len(todo)
        if progress:   # counts cached vectors as done, so a partly cached run starts part way
            progress(hits, hits + total)
        chunks = [todo[start:start + EXTRACT_BATCH] for start in range(0, total, EXTRACT_BATCH)]
        decoded: list[tuple[int, np.ndarray] | None] = [None]   # the last decoded image: its variants follow

        def batch_inputs(chunk: list[tuple[int, int]]) -> np.ndarray:
            inputs = []
            for i, v in chunk:
                if cancel is not None and cancel.is_set():   # decoding a big image takes a while: check often
                    raise ExtractionCancelled()
                if decoded[0] is None or decoded[0][0] != i:
                    decoded[0] = (i, read(sources[i].path))
                inputs.append(self.model_input(decoded[0][1], sources[i].sha256, v))
            return np.stack(inputs).astype(np.float32)

        # The next batch is decoded and preprocessed in a second thread while the base runs on this one: reading is
        # ~15 % of a cold pass, and decoders and TensorFlow both release the GIL.
        done = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-read") as reader:
            upcoming = reader.submit(batch_inputs, chunks[0]) if chunks else None
            for k, chunk in enumerate(chunks):
                if cancel is not None and cancel.is_set():
                    raise ExtractionCancelled()
                batch = upcoming.result()
                upcoming = reader.submit(batch_inputs, chunks[k + 1]) if k + 1 < len(chunks) else None
                vectors = self._run_base(batch)
                self.base_batches += 1
                for (i, v), vec in zip(chunk, vectors):
                    vec = np.asarray(vec, self.dtype)
                    self._store(sources[i].sha256, v, vec)
                    out[i][v] = vec
                done += len(chunk)
                if progress:
                    progress(hits + done, hits + total)
        if not sources:
            return np.zeros((0, variants, 0), np.float32)
        return np.stack([np.stack(row) for row in out]).astype(self.dtype)

    def _run_base(self, batch: np.ndarray) -> np.ndarray:
        """The cached output for a (n <= EXTRACT_BATCH, rows, cols, 3) batch of model inputs."""
        return _pooled_base(self.base_id, self.input_size, self.pooling)(batch)


def clear_memory_cache() -> None:
    """Forget in-memory features (the disk cache stays)."""
    _MEMORY.clear()
