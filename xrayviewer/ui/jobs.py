"""Work functions the viewer runs in background workers. No Qt here: they return plain data, cached by content.

Every result carries what it was computed for (path, file sha256, model key, method, class) so the GUI can drop a
result that no longer matches what is on screen.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from xrayviewer.imaging import RadiographError, Radiograph
from xrayviewer.model.batch import PathAnalysis, result_row
from xrayviewer.reports.ground_truth import ground_truth_labels
from xrayviewer.results import ResultRow
from xrayviewer.ui.cache import LRUCache
from xrayviewer.ui.workers import check_cancel

DISPLAY_MAX_SIDE = 1024     # heatmaps and lung masks are computed at most this big, then scaled onto the image
LEVELS = 4096               # images are kept as 12-bit indices so window/level is one table look-up on the GUI thread
THUMB_SIDE = 72
BAND_PIXELS = 1 << 20       # display arrays are computed this many pixels at a time (see display_arrays)
BIG_IMAGE_BYTES = 16 << 20  # float pixels of a radiograph from 4 megapixels on: see return_freed_memory

METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM"}


@dataclass
class LoadedImage:
    path: str
    radiograph: Radiograph
    sha256: str
    levels: np.ndarray          # uint16 (rows, cols) in 0..LEVELS-1
    display8: np.ndarray        # uint8 at the default window (what is shown first, without a table look-up)

    @property
    def shape(self) -> tuple[int, int]:
        return self.radiograph.shape


@dataclass
class Explained:
    """Everything the viewer shows for one (image, model, method, class) request."""

    path: str
    sha256: str
    model_key: str
    method: str
    class_index: int
    analysis: Any
    heatmap: np.ndarray                      # float32 0..1 at display_shape(image shape)
    row: ResultRow
    lung_mask: np.ndarray | None = None      # bool at the heatmap's shape
    lung_outline: list[np.ndarray] = field(default_factory=list)   # (N, 2) x, y polygons in image pixels
    lung_attention: float | None = None
    notes: list[str] = field(default_factory=list)


class Caches:
    """Content-keyed caches shared by all workers (bounded; thread-safe)."""

    # Budgets sum to ~210 MB: browsing a big folder must not grow the process by more than ~300 MB (issue 8), and
    # the allocator keeps some of what evicted entries freed. Prefetch needs the current image and its two
    # neighbours, plus a few to step back to (a 2048² radiograph is ~28 MB decoded: float pixels, 12-bit levels,
    # 8-bit display). A heatmap is at most 4 MB (float32 at DISPLAY_MAX_SIDE, kept float32 for the 16-bit heatmap
    # export) and Grad-CAM is recomputed from the cached analysis in milliseconds. An analysis is a few KB
    # (probabilities, conv-grid cams, pooled features), so 24 MB still holds a couple of thousand.
    def __init__(self):
        self.images = LRUCache(max_bytes=120 << 20, max_items=6)        # path -> LoadedImage
        self.analyses = LRUCache(max_bytes=24 << 20, max_items=5000)    # (sha, model) -> Analysis
        self.heatmaps = LRUCache(max_bytes=48 << 20, max_items=64)      # (sha, model, method, class) -> heatmap
        self.lungs = LRUCache(max_bytes=16 << 20, max_items=64)         # (sha, shape) -> (mask, outline)


def display_shape(shape: tuple[int, int]) -> tuple[int, int]:
    rows, cols = shape
    scale = min(1.0, DISPLAY_MAX_SIDE / max(rows, cols))
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def ground_truth_for(path: str | Path, classes: Sequence[str]) -> str:
    """One file's ground truth by THE rule (reports.ground_truth: a manifest.csv label, else a parent folder named
    like a class), or "". Asked per file: the badges and the image on screen must agree whichever chunk a file came in."""
    return ground_truth_labels([path], classes).get(Path(path), "")


def display_arrays(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12-bit levels (uint16) and the 8-bit image at the default window of 0..1 pixels.

    Computed band by band: the same values as the whole-image expressions, without their full-size float
    temporaries (12 bytes a pixel at once, on top of the image itself; the viewer may read two images at a time).
    Reading the largest radiograph in ../shared (15 megapixels) peaked at 175 MB of numpy memory, now 129 MB: what
    read_radiograph itself needs.
    """
    from xrayviewer.imaging.display import to_uint8

    levels = np.empty(pixels.shape, np.uint16)
    display8 = np.empty(pixels.shape, np.uint8)
    rows = max(1, BAND_PIXELS // max(1, pixels.shape[1]))
    for top in range(0, pixels.shape[0], rows):
        band = np.clip(pixels[top:top + rows], 0.0, 1.0)
        display8[top:top + rows] = to_uint8(band)
        band *= LEVELS - 1
        levels[top:top + rows] = np.rint(band, out=band)   # already integral: the cast only changes the type
    return levels, display8


def return_freed_memory(radiograph: Radiograph) -> None:
    """After reading a big radiograph: give what the read freed (decoder buffers, float temporaries; often a
    cache eviction too) back to the OS at once, here on the worker, instead of at the GUI's next trim up to a
    second later. For the images in ../shared from 4 megapixels on (~1 in 10); a trim takes a few ms."""
    if radiograph.pixels.nbytes >= BIG_IMAGE_BYTES:
        from xrayviewer.ui.gc_collector import release_free_memory

        release_free_memory()


def load_image(path: str | Path, cache: LRUCache | None = None) -> LoadedImage:
    """Read and hash a radiograph (RadiographError on failure)."""
    from xrayviewer.imaging import file_sha256, read_radiograph

    key = str(path)
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit
    radiograph = read_radiograph(path)
    loaded = LoadedImage(key, radiograph, file_sha256(path), *display_arrays(radiograph.pixels))
    if cache is not None:
        cache.put(key, loaded)
    return_freed_memory(radiograph)
    return loaded


class NotCached(Exception):
    """A look-up-only request (compute=False) met something that is not in the caches."""


def get_analysis(classifier: Any, model_key: str, sha256: str, radiograph: Radiograph, caches: Caches,
                 compute: bool = True) -> Any:
    key = (sha256, model_key)
    analysis = caches.analyses.get(key)
    if analysis is None:
        if not compute:
            raise NotCached(key)
        analysis = caches.analyses.put(key, classifier.analyze(radiograph))
    return analysis


def _resize(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != tuple(shape):
        heatmap = cv2.resize(heatmap, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(heatmap, 0.0, 1.0)


def get_heatmap(classifier: Any, model_key: str, image: LoadedImage, analysis: Any, method: str,
                class_index: int, caches: Caches, compute: bool = True) -> np.ndarray:
    key = (image.sha256, model_key, method, class_index)
    heatmap = caches.heatmaps.get(key)
    if heatmap is None:
        if not compute:
            raise NotCached(key)
        shape = display_shape(image.shape)
        if method == "gradcam":   # already in the analysis' one compiled pass
            heatmap = _resize(analysis.heatmap(class_index, shape), shape)
        else:
            from xrayviewer.model.explain import upsample_cam

            raw = classifier.explain(image.radiograph, method=method, class_index=class_index).raw
            heatmap = _resize(upsample_cam(raw, shape), shape)
        caches.heatmaps.put(key, heatmap)
    return heatmap


def get_lungs(segmenter: Any, image: LoadedImage, caches: Caches,
              compute: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """Lung mask at display shape and its outline as polygons in image pixel coordinates."""
    shape = display_shape(image.shape)
    key = (image.sha256, shape)
    hit = caches.lungs.get(key)
    if hit is None:
        if not compute:
            raise NotCached(key)
        mask = np.asarray(segmenter.segment(image.radiograph), dtype=bool)
        if mask.shape != shape:
            mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        from xrayviewer.model.lungs import outline as mask_outline

        # contour points are pixel indices at the mask's size; +0.5 puts them on pixel centres in image coordinates
        scale = np.float32([image.shape[1] / shape[1], image.shape[0] / shape[0]])
        outline = [(poly.astype(np.float32) + 0.5) * scale for poly in mask_outline(mask)]
        hit = caches.lungs.put(key, (mask, outline))
    return hit


def explain_image(image: LoadedImage, classifier: Any, model_key: str, method: str, class_index: int | None,
                  caches: Caches, *, segmenter: Any = None, ground_truth: str = "",
                  cancel: threading.Event | None = None, compute: bool = True) -> Explained:
    """Prediction + heatmap (+ lung attention) for the image on screen. Runs in a model worker.

    With compute=False it only assembles what the caches hold (no TensorFlow: safe on the GUI thread) and raises
    NotCached otherwise — a revisited or prefetched image is then shown without waiting for the model's queue.
    """
    analysis = get_analysis(classifier, model_key, image.sha256, image.radiograph, caches, compute)
    check_cancel(cancel)
    index = int(np.argmax(analysis.probabilities)) if class_index is None else int(class_index)
    heatmap = get_heatmap(classifier, model_key, image, analysis, method, index, caches, compute)
    check_cancel(cancel)
    mask, outline, attention, notes = None, [], None, []
    if segmenter is not None:
        try:
            mask, outline = get_lungs(segmenter, image, caches, compute)
            from xrayviewer.model.lungs import lung_attention

            attention = float(lung_attention(heatmap, mask))
        except NotCached:
            raise
        except Exception as exc:  # noqa: BLE001 - the lung model is an extra; the prediction stands without it
            notes.append(f"Lung fields unavailable: {exc}")
    row = result_row(PathAnalysis(image.path, analysis), ground_truth)
    row.lung_attention = attention   # measured on the heatmap shown, at display size
    return Explained(image.path, image.sha256, model_key, method, index, analysis, heatmap, row, mask, outline,
                     attention, notes)


def classify_file(path: str, classifier: Any, model_key: str, caches: Caches, ground_truth: str = "",
                  cancel: threading.Event | None = None) -> ResultRow:
    """Badge for one file of the folder (background). Unreadable files give a row with `error`.

    Reads only what the prediction needs (not the display arrays of load_image): it runs beside the browsing."""
    from xrayviewer.imaging import file_sha256, read_radiograph

    check_cancel(cancel)
    try:
        radiograph = read_radiograph(path)
        sha256 = file_sha256(path)
    except RadiographError as exc:
        return ResultRow(path=path, ground_truth=ground_truth, error=str(exc))
    check_cancel(cancel)
    analysis = get_analysis(classifier, model_key, sha256, radiograph, caches)
    return_freed_memory(radiograph)
    return result_row(PathAnalysis(path, analysis), ground_truth)


def scan_folder(folder: str, progress: Callable[[list[str]], None] | None = None,
                cancel: threading.Event | None = None, chunk: int = 64) -> int:
    """Stream the radiographs of a folder in chunks of paths (the list fills while the scan goes on)."""
    from xrayviewer.imaging import iter_radiographs

    batch: list[str] = []
    count = 0
    for path in iter_radiographs(folder, recursive=True):
        check_cancel(cancel)
        batch.append(str(path))
        count += 1
        if len(batch) >= chunk:
            progress and progress(batch)
            batch = []
    if batch and progress:
        progress(batch)
    return count


def make_thumbnails(paths: list[str], progress: Callable[[tuple], None] | None = None,
                    cancel: threading.Event | None = None, side: int = THUMB_SIDE) -> int:
    """Emit (path, uint8 thumbnail | None, error message) per file."""
    from xrayviewer.imaging import read_radiograph

    for path in paths:
        check_cancel(cancel)
        try:
            pixels = read_radiograph(path).pixels
            scale = side / max(pixels.shape)
            size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
            thumb = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
            item = (path, np.ascontiguousarray(np.clip(thumb * 255 + 0.5, 0, 255).astype(np.uint8)), "")
        except RadiographError as exc:
            item = (path, None, str(exc))
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop the strip
            item = (path, None, f"could not read this file ({type(exc).__name__}: {exc})")
        progress and progress(item)
    return len(paths)


@dataclass
class LoadedModel:
    path: str
    classifier: Any
    segmenter: Any = None        # LungSegmenter when models/lungs loads
    note: str = ""               # why the lung model is not available, when it exists but failed


def load_classifier(path: str) -> LoadedModel:
    """Classifier (+ LungSegmenter when models/lungs exists). Slow (TensorFlow import + weights): worker only."""
    from xrayviewer.model.classifier import Classifier
    from xrayviewer.paths import LUNG_MODEL_DIR

    # Warm-up while "Loading model…" shows: the first pass traces the compiled functions (not at the first image),
    # the second measures this machine's pass time, so the audit's time estimate is right before any image is viewed.
    warm_up = Radiograph.from_array(np.full((64, 64), 0.5, np.float32))
    loaded = LoadedModel(path, Classifier.load(path))
    for _ in range(2):
        loaded.classifier.analyze(warm_up)
    if (Path(LUNG_MODEL_DIR) / "model.json").is_file():
        try:
            from xrayviewer.model.lungs import LungSegmenter

            loaded.segmenter = LungSegmenter.load(LUNG_MODEL_DIR)
            loaded.segmenter.segment(warm_up)
        except Exception as exc:  # noqa: BLE001 - without the lung model the viewer still shows predictions
            loaded.note = f"lung model not loaded: {exc}"
    return loaded
