"""Python's cyclic garbage collector runs on the GUI thread only (as pyqtgraph's GarbageCollector does).

Why: a collection runs in whichever thread happens to allocate. When a worker's allocations trigger it, Python-owned
Qt objects left in reference cycles (a closed dialog, an old controller) are destroyed on that worker thread while
the GUI thread may still use them — a segfault (seen in the test suite). So automatic collection is switched off and
a timer on the GUI thread collects, generation by generation, when the usual thresholds are exceeded.
`pause()`/`resume()` let a long model build hold collections off without switching the automatic collector back on.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

_pauses = 0
_collector: "GuiThreadCollector | None" = None


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
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.collect_if_due)
        self.timer.start(interval_ms)

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
