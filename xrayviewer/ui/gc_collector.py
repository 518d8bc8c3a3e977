"""Python's cyclic garbage collector runs on the GUI thread only (as pyqtgraph's GarbageCollector does).

Why: a collection runs in whichever thread happens to allocate. When a worker's allocations trigger it, Python-owned
Qt objects left in reference cycles (a closed dialog, an old controller) are destroyed on that worker thread while
the GUI thread may still use them — a segfault (seen in the test suite). So automatic collection is switched off and
a timer on the GUI thread collects, generation by generation, when the usual thresholds are exceeded.
`pause()`/`resume()` let a long model build hold collections off without switching the automatic collector back on.

Memory the C allocator holds (glibc; a no-op elsewhere), measured with benchmarks/bench_app.py memory (figures and
the alternatives tried are in benchmarks/README.md):
- The same timer gives the memory glibc holds free back to the OS once work has happened (`release_free_memory`).
  Browsing frees big arrays all the time (decoded radiographs leaving the caches, TensorFlow's intermediate tensors)
  and glibc keeps what is freed inside its heaps, where it still counts as the process's memory: after 500 images
  one malloc_trim(0) returned ~300 MB in 6 ms. Browsing frees memory continuously, so the app trims at most once a
  second while workers finish, not only when idle; and a worker that has just read a big radiograph trims at once
  (ui/jobs.py return_freed_memory), which took ~60 MB off the peak.
- `limit_malloc_arenas()` at start: glibc gives each thread that allocates its own arena (up to 8 per core), and memory
  freed in one arena is not reused by threads of another, so the pool threads and TensorFlow's threads each kept their
  own reserve of freed image-sized blocks. Two arenas (what MALLOC_ARENA_MAX=2 does) lowered the peak without slowing
  browsing.
- `fix_mmap_threshold()` at start: glibc raises its mmap threshold each time a big block is freed (up to 32 MB), so
  after a while TensorFlow's intermediate tensors of a few MB come from the heaps and fragment them. The two-scale
  default model (version 3: a 224 branch and a 256x256 U-Net beside the 336 pass) grew by 353 MB over 500 images
  with it dynamic (goal < 300), 181 and 218 MB with it fixed at 4 MB (those tensors mmapped, and unmapped when
  freed). The price is page faults: 729-756 vs 706 ms an image browsed, the prefetched next image 26 vs 12 ms
  (goal 50). 1 MB mmapped most tensors and browsed 3.5x slower (session 1).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import time

from PySide6.QtCore import QObject, QTimer

from xrayviewer.ui import workers

TRIM_INTERVAL_S = 1.0   # at most one malloc_trim per second, and only when workers finished since the last one
MALLOC_ARENAS = 2
MMAP_THRESHOLD = 4 * 1024 * 1024
_M_ARENA_MAX = -8       # mallopt parameter numbers (glibc malloc.h)
_M_MMAP_THRESHOLD = -3

_pauses = 0
_collector: "GuiThreadCollector | None" = None


def _glibc_function(name: str, argtypes: list) -> "ctypes._CFuncPtr | None":
    """A function of glibc's allocator, or None where there is no glibc (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version   # glibc only: musl has no such symbol
        function = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function


def _glibc_malloc_trim():
    return _glibc_function("malloc_trim", [ctypes.c_size_t])


_malloc_trim = _glibc_malloc_trim()


def _set_malloc_option(parameter: int, value: int, environment_name: str) -> bool:
    """glibc's mallopt(parameter, value), unless the user set the same option in the environment (theirs wins).
    False, doing nothing, where there is no glibc."""
    mallopt = _glibc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None or environment_name in os.environ:
        return False
    return mallopt(parameter, value) == 1


def limit_malloc_arenas() -> bool:
    """Call at start, before threads exist: glibc then shares MALLOC_ARENAS arenas among all threads."""
    return _set_malloc_option(_M_ARENA_MAX, MALLOC_ARENAS, "MALLOC_ARENA_MAX")


def fix_mmap_threshold() -> bool:
    """Call at start: blocks of MMAP_THRESHOLD or more are mmapped (and returned to the OS when freed), and glibc no
    longer raises that threshold."""
    return _set_malloc_option(_M_MMAP_THRESHOLD, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_")


trim_stats = {"count": 0, "total_ms": 0.0, "max_ms": 0.0}   # read by benchmarks/bench_app.py memory


def release_free_memory() -> bool:
    """Return the memory the C allocator holds free to the OS (glibc's malloc_trim(0), which releases the free
    pages inside every arena, not only at the heaps' tops). False, doing nothing, where there is no such call.
    Any thread may call it (glibc locks each arena in turn); the GIL is released meanwhile (ctypes)."""
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
