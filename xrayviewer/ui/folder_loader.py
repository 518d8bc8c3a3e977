"""Streams the radiographs of a folder, and their thumbnails, from workers.

A scan emits its paths in chunks as it finds them (a folder of 10 000 files fills the list at once); each chunk's
thumbnails are made in small low-priority jobs, so the current image's read never waits long behind them.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal

from xrayviewer.ui.jobs import make_thumbnails, scan_folder
from xrayviewer.ui.workers import LatestRequest, Worker, discard, start_worker

THUMB_CHUNK = 8
PRIORITY_SCAN, PRIORITY_THUMBNAILS = 20, 0


class FolderLoader(QObject):
    pathsFound = Signal(list)          # a chunk of paths, in scan order
    thumbnailReady = Signal(object)    # (path, uint8 thumbnail | None, error message)
    scanFinished = Signal(int)         # number of radiographs found
    scanFailed = Signal(str)           # why the folder could not be read

    def __init__(self, pool: QThreadPool, parent: QObject | None = None):
        super().__init__(parent)
        self.pool = pool
        self._scan = LatestRequest(pool, PRIORITY_SCAN)
        self._thumb_workers: list[Worker] = []

    def scan(self, folder: str) -> None:
        """Stop whatever was loading and stream this folder."""
        self.stop()
        worker = Worker(scan_folder, str(folder))
        worker.signals.progress.connect(self._on_chunk)
        worker.signals.returned.connect(self._on_finished)
        worker.signals.errored.connect(self._on_failed)
        self._scan.submit(worker)

    def add(self, paths: list[str]) -> None:
        """Files given directly (Open file…, drop): listed at once, thumbnails in the background."""
        self.stop()
        self._on_chunk(list(paths))
        self.scanFinished.emit(len(paths))

    def stop(self) -> None:
        self._scan.cancel()
        for worker in self._thumb_workers:
            discard(worker)
        self._thumb_workers = []

    def _on_chunk(self, paths: list[str]) -> None:
        self.pathsFound.emit(paths)
        for i in range(0, len(paths), THUMB_CHUNK):
            worker = Worker(make_thumbnails, paths[i:i + THUMB_CHUNK])
            worker.signals.progress.connect(self._on_thumbnail)
            worker.signals.finished.connect(self._forget_finished)
            self._thumb_workers.append(start_worker(worker, self.pool, PRIORITY_THUMBNAILS))

    def _on_thumbnail(self, item: tuple) -> None:
        self.thumbnailReady.emit(item)

    def _on_finished(self, count: int) -> None:
        self.scanFinished.emit(int(count))

    def _on_failed(self, exc: BaseException) -> None:
        self.scanFailed.emit(str(exc) or type(exc).__name__)

    def _forget_finished(self, *_: Any) -> None:
        self._thumb_workers = [w for w in self._thumb_workers if not w.done.is_set()]
