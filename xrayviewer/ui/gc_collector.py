"""Python's cyclic garbage collector runs on the GUI thread only (as pyqtgraph's GarbageCollector does).

Why: a collection runs in whichever thread happens to allocate. When a worker's allocations trigger it, Python-owned
Qt objects left in reference cycles (a closed dialog, an old controller) are destroyed on that worker thread while
the GUI thread may still use them — a segfault (seen in the test suite). So automatic collection is switched off and
a timer on the GUI thread collects, generation by generation, when the usual thresholds are exceeded.
`pause()`/`resume()` let a long model build hold collections off without switching the automatic collector back on.

The same timer gives the memory that glibc holds free back to the OS once work has happened (`release_free_memory`):
browsing frees big arrays all the time (decoded radiographs evicted from the caches, TensorFlow's intermediate
tensors), and glibc keeps most of what is freed inside its heaps, where it still counts as the process's memory. Measured
with benchmarks/bench_app.py memory, 500 images: ~340 MB free inside glibc's heaps at the end, of which one
malloc_trim(0) returned ~320 MB in 6 ms. Browsing frees memory continuously, so the app trims at most once a
second while workers finish, not only when idle. Alternatives measured: a fixed mmap threshold
(MALLOC_MMAP_THRESHOLD_) also removed the growth but made browsing 3.5x slower (every big tensor mmapped and
faulted in anew); see benchmarks/README.md.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time

from PySide6.QtCore import QObject, QTimer

from xrayviewer.ui import workers

TRIM_INTERVAL_S = 1.0   # at most one malloc_trim per second, and only when workers finished since the last one

_pauses = 0
_collector: "GuiThreadCollector | None" = None


def _glibc_malloc_trim():
    """glibc's malloc_trim, or None where there is none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version   # glibc only: musl has no such symbol
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _glibc_malloc_trim()
trim_stats = {"count": 0, "total_ms": 0.0, "max_ms": 0.0}   # read by benchmarks/bench_app.py memory


def release_free_memory() -> bool:
    """Return the memory the C allocator holds free to the OS (glibc's malloc_trim(0), which releases the free
    pages inside every arena, not only at the heaps' tops). False, doing nothing, where there is no such call.
    Runs with the GIL released (ctypes), so workers go on meanwhile."""
    if _malloc_trim is None:
        return False
    start = time.perf_counter()
    _malloc_trim(0)
    took = (time.perf_counter() - start) * 1000
    trim_stats["count"] += 1
    trim_stats["total_ms"] += took
    trim_stats["max_ms"] = max(trim_stats["max_ms"], took)
    return True


def pause() -> None:
    """Hold collections off (nestable), e.g. while a model with millions of long-lived objects is built."""
    global _pauses
    _pauses += 1
    gc.disable()


def resume() -> None:
    global _pauses
    _pauses = max(0, _pauses - 1)
    if _pauses == 0 and _collector is None:
        gc.enable()  # no GUI-thread collector installed (tests, command line): back to automatic collection


class GuiThreadCollector(QObject):
    def __init__(self, parent: QObject, interval_ms: int = 500):
        super().__init__(parent)
        self._trimmed_at = time.monotonic()
        self._finished_at_trim = workers.finished_count()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.collect_if_due)
        self.timer.timeout.connect(self.trim_if_due)
        self.timer.start(interval_ms)

    def trim_if_due(self) -> None:
        """Return freed memory to the OS after work, at most every TRIM_INTERVAL_S (a trim takes a few ms)."""
        finished = workers.finished_count()
        if finished == self._finished_at_trim or time.monotonic() - self._trimmed_at < TRIM_INTERVAL_S:
            return
        self._finished_at_trim, self._trimmed_at = finished, time.monotonic()
        release_free_memory()

    def collect_if_due(self) -> None:
        if _pauses:
            return
        limits = gc.get_threshold()
        counts = gc.get_count()
        # the deepest generation over its threshold, as the automatic collector would choose
        for generation in (2, 1, 0):
            if counts[generation] > limits[generation]:
                gc.collect(generation)
                break


def install_gui_thread_collector(app: QObject) -> GuiThreadCollector:
    """Call once, on the GUI thread, with the QApplication."""
    global _collector
    if _collector is None:
        gc.disable()
        _collector = GuiThreadCollector(app)
    return _collector
