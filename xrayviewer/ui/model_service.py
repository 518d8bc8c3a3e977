"""The classifier the window uses, loaded in a worker so the window is on screen before TensorFlow is imported."""

from __future__ import annotations

import gc
import itertools
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal

from xrayviewer.ui import gc_collector
from xrayviewer.ui.jobs import LoadedModel, load_classifier
from xrayviewer.ui.workers import LatestRequest, Worker

_generations = itertools.count(1)


def freeze_long_lived_objects() -> None:
    """Move every object alive now out of the cyclic GC's reach (gc.freeze).

    A TensorFlow model and its traced functions are millions of long-lived objects; a full collection then takes
    0.5-1 s, and whichever thread triggers it holds the GIL, so the GUI froze for that long. Called once a model is
    loaded and once it has traced.
    """
    gc.freeze()


class ModelService(QObject):
    """Holds the current classifier (`.classifier`, None until loaded) and the lung segmenter when models/lungs exists.

    Signals: `modelChanged(classifier)` after a load succeeds (or `set_classifier`), `loadStarted(path)`,
    `loadFailed(path, message)`. `model_key` changes with every model, so caches never mix two models' results.
    """

    modelChanged = Signal(object)
    loadStarted = Signal(str)
    loadFailed = Signal(str, str)

    def __init__(self, pool: QThreadPool | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.classifier: Any = None
        self.segmenter: Any = None
        self.bundle_path: Path | None = None
        self.model_key = ""
        self.loading_path: Path | None = None
        self.note = ""               # e.g. why the lung model is unavailable
        self._slot = LatestRequest(pool, priority=100)

    @property
    def loading(self) -> bool:
        return self.loading_path is not None

    def load(self, path: str | Path) -> None:
        """Load a bundle in the background; the current model stays in use until the new one is ready."""
        # Building a model creates millions of objects but little garbage: pause the cyclic GC meanwhile, or its
        # full collections (GIL held, 0.5 s+) freeze the GUI while "Loading model…" is shown.
        freeze_long_lived_objects()
        gc_collector.pause()
        self.loading_path = Path(path)
        worker = Worker(load_classifier, str(path), tag=str(path))
        worker.signals.returned.connect(self._on_loaded)
        worker.signals.errored.connect(self._on_failed)
        self._slot.submit(worker)
        self.loadStarted.emit(str(path))

    def set_classifier(self, classifier: Any, segmenter: Any = None, path: str | Path | None = None) -> None:
        """Use an already loaded classifier (tests, or a model trained in this session)."""
        replacing = self.classifier is not None and classifier is not self.classifier
        self.classifier, self.segmenter = classifier, segmenter
        if replacing:   # the old model's cycles were frozen: let one (slow, rare) full collection free them
            gc.unfreeze()
            gc.collect()
        freeze_long_lived_objects()
        bundle = getattr(classifier, "bundle", None)
        self.bundle_path = Path(path or getattr(bundle, "path", "") or "") if classifier is not None else None
        self.model_key = f"{next(_generations)}:{self.bundle_path}" if classifier is not None else ""
        self.loading_path = None
        self.modelChanged.emit(classifier)

    def cancel(self) -> None:
        """Drop a load in progress (window closing); the collector is switched back on."""
        if self.loading_path is not None:
            self._slot.cancel()
            self.loading_path = None
            gc_collector.resume()

    def _on_loaded(self, loaded: LoadedModel) -> None:
        if self.loading_path is None or Path(loaded.path) != self.loading_path:
            return  # a newer load request superseded this one
        gc_collector.resume()
        self.note = loaded.note
        self.set_classifier(loaded.classifier, loaded.segmenter, loaded.path)

    def _on_failed(self, exc: BaseException) -> None:
        gc_collector.resume()
        path = str(self.loading_path or "")
        self.loading_path = None
        self.loadFailed.emit(path, str(exc) or type(exc).__name__)
