"""What is computed for the image on screen, its neighbours and the rest of the folder — never on the GUI thread.

Three kinds of background work, one worker pattern:
- the current image: read (I/O pool, newest request wins), then prediction + heatmap (model pool, high priority);
- prefetch: the neighbours of the current image, so "next" shows its heatmap at once (model pool, medium priority);
- badges: the rest of the folder, one file at a time (model pool, low priority) so interactive work never queues
  behind it.
Every result names what it was computed for; a result that does not match what is wanted now is dropped, so a user
flipping through 100 images never sees a heatmap of the wrong image.
"""

from __future__ import annotations

import inspect
from collections import deque
from typing import Any, Callable

from PySide6.QtCore import QObject, QThreadPool, Signal

from xrayviewer.results import ResultRow
from xrayviewer.ui.jobs import (METHODS, Caches, Explained, LoadedImage, NotCached, classify_file, explain_image,
                                ground_truth_for, load_image)
from xrayviewer.ui.model_service import ModelService, freeze_long_lived_objects
from xrayviewer.ui.workers import LatestRequest, Worker, check_cancel, discard, start_worker

PRIORITY_CURRENT, PRIORITY_PREFETCH, PRIORITY_BACKGROUND = 10, 5, 0


def _tagged(tag: Any, fn: Callable, *args: Any, cancel=None, **kwargs: Any) -> tuple[Any, Any]:
    """Run fn and return (tag, result); an exception carries the tag, so the GUI knows which request failed."""
    if "cancel" in inspect.signature(fn).parameters:
        kwargs["cancel"] = cancel
    try:
        return tag, fn(*args, **kwargs)
    except Exception as exc:
        exc.request_tag = tag  # type: ignore[attr-defined]
        raise


def _prefetch(paths: list[str], classifier: Any, model_key: str, method: str, class_index: int | None,
              caches: Caches, segmenter: Any, classes: list[str], progress=None, cancel=None) -> int:
    """Read and explain the neighbours into the caches; each finished row goes out as progress (for badges)."""
    done = 0
    for path in paths:
        check_cancel(cancel)
        try:
            image = load_image(path, caches.images)
        except Exception:  # noqa: BLE001 - the badge pass reports unreadable files; prefetch just skips them
            continue
        check_cancel(cancel)
        explained = explain_image(image, classifier, model_key, method, class_index, caches, segmenter=segmenter,
                                  ground_truth=ground_truth_for(path, classes), cancel=cancel)
        progress and progress(explained.row)
        done += 1
    return done


class ImageSession(QObject):
    """Requests and results for the current image; emits only results that match what is on screen."""

    imageReady = Signal(object)          # LoadedImage of the current path
    imageFailed = Signal(str, str)       # path, message
    explainPending = Signal(str)         # what is being computed ("Computing Grad-CAM…", "Loading model…")
    explained = Signal(object)           # Explained for the current path, model, method and class
    explainFailed = Signal(str, str)     # path, message
    rowReady = Signal(object)            # ResultRow of any file (badges): current, prefetched or background
    backgroundFinished = Signal()        # the badge queue ran empty

    def __init__(self, model_service: ModelService, io_pool: QThreadPool, model_pool: QThreadPool,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.models = model_service
        self.io_pool, self.model_pool = io_pool, model_pool
        self.caches = Caches()
        self.method = "gradcam"
        self.class_index: int | None = None      # None: the predicted class
        self.current_path: str | None = None
        self.current_image: LoadedImage | None = None
        self.current_explained: Explained | None = None
        self.neighbours: list[str] = []
        self._read = LatestRequest(io_pool, PRIORITY_CURRENT)
        self._explain = LatestRequest(model_pool, PRIORITY_CURRENT)
        self._prefetch = LatestRequest(model_pool, PRIORITY_PREFETCH)
        self._background: deque[str] = deque()
        self._background_worker: Worker | None = None
        self._traced_models: set[str] = set()
        self._known_rows: dict[tuple[str, str], ResultRow] = {}   # (path, model_key) -> row already sent
        model_service.modelChanged.connect(self._on_model_changed)

    # --- the current image
    def select(self, path: str | None, neighbours: list[str] | None = None) -> None:
        self.current_path = None if path is None else str(path)
        self.neighbours = [str(p) for p in (neighbours or [])]
        self.current_image, self.current_explained = None, None
        self._explain.cancel()
        self._prefetch.cancel()
        if path is None:
            self._read.cancel()
            return
        self.caches.images.pin(self.current_path)
        cached = self.caches.images.get(self.current_path)
        if cached is not None:
            self._read.cancel()
            self._on_image_loaded((self.current_path, cached))
            return
        worker = Worker(_tagged, self.current_path, load_image, self.current_path, self.caches.images)
        worker.signals.returned.connect(self._on_image_loaded)
        worker.signals.errored.connect(self._on_image_error)
        self._read.submit(worker)

    def set_method(self, method: str) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        self.method = method
        self.refresh()

    def set_class_index(self, class_index: int | None) -> None:
        self.class_index = class_index
        self.refresh()

    def refresh(self) -> None:
        """Recompute (or fetch from the cache) what the current image shows, e.g. after a method change."""
        if self.current_image is not None:
            self._request_explanation()

    def _on_image_loaded(self, tagged: tuple[str, LoadedImage]) -> None:
        path, image = tagged
        if path != self.current_path:
            return  # the user has moved on
        self.current_image = image
        self.imageReady.emit(image)
        self._request_explanation()

    def _on_image_error(self, exc: BaseException) -> None:
        path = getattr(exc, "request_tag", None)
        if path != self.current_path:
            return
        message = str(exc) or type(exc).__name__
        self.imageFailed.emit(path, message)
        self.rowReady.emit(ResultRow(path=path, error=message))

    def _wanted(self) -> tuple | None:
        image, key = self.current_image, self.models.model_key
        if image is None or self.models.classifier is None:
            return None
        return (image.path, image.sha256, key, self.method, self.class_index)

    def _request_explanation(self) -> None:
        classifier = self.models.classifier
        self._explain.cancel()
        self.current_explained = None
        if classifier is None:
            self.explainPending.emit("Loading model…" if self.models.loading else "No model loaded")
            return
        wanted = self._wanted()
        image = self.current_image
        args = (image, classifier, self.models.model_key, self.method, self.class_index, self.caches)
        kwargs = dict(segmenter=self.models.segmenter, ground_truth=ground_truth_for(image.path, classifier.classes))
        try:   # all cached (prefetched, revisited): show it now, not after whatever the model thread is doing
            self._on_explained((wanted, explain_image(*args, compute=False, **kwargs)))
            return
        except NotCached:
            pass
        self.explainPending.emit(f"Computing {METHODS[self.method]}…")
        worker = Worker(_tagged, wanted, explain_image, *args, **kwargs)
        worker.signals.returned.connect(self._on_explained)
        worker.signals.errored.connect(self._on_explain_error)
        self._explain.submit(worker)

    def _on_explained(self, tagged: tuple[tuple, Explained]) -> None:
        tag, explained = tagged
        if tag != self._wanted():
            return
        self.current_explained = explained
        if explained.model_key not in self._traced_models:   # the model's traced functions are long-lived too
            self._traced_models.add(explained.model_key)
            freeze_long_lived_objects()
        self.explained.emit(explained)
        self._send_row(explained.row)
        self._start_prefetch()

    def _on_explain_error(self, exc: BaseException) -> None:
        if getattr(exc, "request_tag", None) != self._wanted():
            return
        self.explainFailed.emit(self.current_path or "", str(exc) or type(exc).__name__)

    def _start_prefetch(self) -> None:
        classifier = self.models.classifier
        if classifier is None or not self.neighbours:
            return
        # Grad-CAM comes with the prediction; the other methods take seconds: prefetch only the next image for them
        neighbours = self.neighbours if self.method == "gradcam" else self.neighbours[:1]
        worker = Worker(_prefetch, list(neighbours), classifier, self.models.model_key, self.method,
                        self.class_index, self.caches, self.models.segmenter, list(classifier.classes))
        worker.signals.progress.connect(self._send_row)
        self._prefetch.submit(worker)

    # --- badges for the whole folder
    def queue_background(self, paths: list[str]) -> None:
        """Add files to the badge queue (a folder scan streams them in chunks)."""
        self._background.extend(str(p) for p in paths)
        self._next_background()

    def stop_background(self) -> None:
        self._background.clear()
        if self._background_worker is not None:
            discard(self._background_worker)
            self._background_worker = None

    @property
    def background_remaining(self) -> int:
        return len(self._background) + (self._background_worker is not None)

    def _next_background(self) -> None:
        classifier = self.models.classifier
        if self._background_worker is not None or classifier is None:
            return
        key = self.models.model_key
        while self._background and (self._background[0], key) in self._known_rows:
            self._background.popleft()
        if not self._background:
            self.backgroundFinished.emit()
            return
        path = self._background.popleft()
        worker = Worker(_tagged, (path, key), classify_file, path, classifier, key, self.caches,
                        ground_truth_for(path, classifier.classes))
        worker.signals.returned.connect(self._on_background_row)
        worker.signals.errored.connect(self._on_background_error)
        self._background_worker = worker
        start_worker(worker, self.model_pool, PRIORITY_BACKGROUND)

    def _on_background_row(self, tagged: tuple[tuple[str, str], ResultRow]) -> None:
        (path, key), row = tagged
        self._background_worker = None
        if key == self.models.model_key:
            self._send_row(row)
        self._next_background()

    def _on_background_error(self, exc: BaseException) -> None:
        self._background_worker = None
        path, key = getattr(exc, "request_tag", ("", ""))
        if key == self.models.model_key:
            self._send_row(ResultRow(path=path, error=f"could not classify: {exc}"))
        self._next_background()

    def _send_row(self, row: ResultRow) -> None:
        self._known_rows[(row.path, self.models.model_key)] = row
        self.rowReady.emit(row)

    def known_row(self, path: str) -> ResultRow | None:
        return self._known_rows.get((str(path), self.models.model_key))

    # --- model changes
    def _on_model_changed(self, classifier: Any) -> None:
        """Badges of the old model are void (the window re-queues the folder); the current image is recomputed."""
        self._known_rows.clear()
        self.stop_background()
        if classifier is None or (self.class_index is not None and self.class_index >= len(classifier.classes)):
            self.class_index = None
        self.refresh()

    def shutdown(self) -> None:
        self.stop_background()
        for slot in (self._read, self._explain, self._prefetch):
            slot.cancel()

