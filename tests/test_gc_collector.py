"""Cyclic garbage is collected on the GUI thread only, never by a worker's allocations (a worker freeing Qt objects
crashed the process). Runs in a fresh process: the collector switches automatic collection off for the process."""

import subprocess
import sys

CHILD = r"""
import gc, os, sys, threading, time
os.environ['QT_QPA_PLATFORM'] = 'offscreen'
from PySide6.QtCore import QCoreApplication
from xrayviewer.ui import gc_collector

app = QCoreApplication([])
gc_collector.install_gui_thread_collector(app)
assert not gc.isenabled()
freed_on = []

class Node:
    def __init__(self):
        self.me = self                      # a cycle: only the cyclic collector frees it
    def __del__(self):
        freed_on.append(threading.current_thread().name)

def make_garbage():
    for _ in range(5):
        Node()

def worker_allocates():
    junk = [[] for _ in range(200_000)]     # far past gen-0's threshold: would trigger a collection here
    del junk

make_garbage()
t = threading.Thread(target=worker_allocates, name="worker"); t.start(); t.join()
assert freed_on == [], freed_on             # the worker's allocations collected nothing
# Past gen-0's threshold for sure (the worker's objects are gone again, and how many allocations the imports left
# over varies with the modules imported): the GUI thread's timer has something to collect.
kept = [[] for _ in range(1000)]

gc_collector.pause()
deadline = time.monotonic() + 1.2
while time.monotonic() < deadline:
    app.processEvents(); time.sleep(0.02)
assert freed_on == [], "collected while paused"
gc_collector.resume()
assert not gc.isenabled()                   # resume does not switch automatic collection back on

deadline = time.monotonic() + 5
while not freed_on and time.monotonic() < deadline:
    app.processEvents(); time.sleep(0.02)
print(sorted(set(freed_on)), len(freed_on))
"""


def test_cyclic_garbage_is_collected_on_the_gui_thread_only():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "['MainThread'] 5"


def test_pause_and_resume_without_a_collector_restore_automatic_collection():
    code = ("import gc; from xrayviewer.ui import gc_collector as g; g.pause(); g.pause(); a=gc.isenabled(); "
            "g.resume(); b=gc.isenabled(); g.resume(); print(a, b, gc.isenabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True"]


# ---------------------------------------------------------------- returning freed memory to the OS (glibc)

def test_release_free_memory_and_arena_limit_on_glibc(monkeypatch):
    from xrayviewer.ui import gc_collector

    if gc_collector._malloc_trim is None:
        import pytest

        pytest.skip("no glibc here (the no-op is tested below)")
    count = gc_collector.trim_stats["count"]
    assert gc_collector.release_free_memory() is True
    assert gc_collector.trim_stats["count"] == count + 1
    code = ("from xrayviewer.ui import gc_collector as g; print(g.limit_malloc_arenas(), g.fix_mmap_threshold())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stderr
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")    # the user's own settings win
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert gc_collector.limit_malloc_arenas() is False
    assert gc_collector.fix_mmap_threshold() is False


def test_release_free_memory_is_a_safe_no_op_where_unsupported(monkeypatch):
    import ctypes

    from xrayviewer.ui import gc_collector

    for platform in ("darwin", "win32"):
        monkeypatch.setattr(sys, "platform", platform)
        assert gc_collector._glibc_malloc_trim() is None
        assert gc_collector.limit_malloc_arenas() is False
        assert gc_collector.fix_mmap_threshold() is False
    monkeypatch.setattr(sys, "platform", "linux")

    class Musl:   # a C library without glibc's symbols
        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.setattr(ctypes, "CDLL", lambda *_a, **_k: Musl())
    assert gc_collector._glibc_malloc_trim() is None
    assert gc_collector.limit_malloc_arenas() is False

    def no_library(*_a, **_k):
        raise OSError("no C library to load")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert gc_collector._glibc_malloc_trim() is None
    assert gc_collector.limit_malloc_arenas() is False
    assert gc_collector.fix_mmap_threshold() is False

    monkeypatch.setattr(gc_collector, "_malloc_trim", None)
    count = gc_collector.trim_stats["count"]
    assert gc_collector.release_free_memory() is False
    assert gc_collector.trim_stats["count"] == count


def test_memory_is_returned_only_after_work_and_at_most_once_per_interval(qtbot, monkeypatch):
    from PySide6.QtCore import QObject

    from xrayviewer.ui import gc_collector, workers

    trims: list[int] = []
    monkeypatch.setattr(gc_collector, "release_free_memory", lambda: trims.append(1) or True)
    finished = [0]
    monkeypatch.setattr(workers, "finished_count", lambda: finished[0])
    clock = [1000.0]
    monkeypatch.setattr(gc_collector.time, "monotonic", lambda: clock[0])
    parent = QObject()
    collector = gc_collector.GuiThreadCollector(parent)
    collector.timer.stop()                      # driven by hand here

    clock[0] += 5
    collector.trim_if_due()
    assert trims == []                          # idle: no work finished, nothing to return
    finished[0] += 3
    collector.trim_if_due()
    assert trims == [1]
    finished[0] += 3
    clock[0] += gc_collector.TRIM_INTERVAL_S / 2
    collector.trim_if_due()
    assert trims == [1]                         # too soon after the last one
    clock[0] += gc_collector.TRIM_INTERVAL_S
    collector.trim_if_due()
    assert trims == [1, 1]


def test_big_radiographs_return_what_their_read_freed_at_once(monkeypatch):
    """The viewer's read and badge workers trim after a radiograph from 4 megapixels on, not after small ones."""
    import numpy as np

    from xrayviewer.imaging import Radiograph
    from xrayviewer.ui import gc_collector, jobs

    trims: list[int] = []
    monkeypatch.setattr(gc_collector, "release_free_memory", lambda: trims.append(1) or True)
    jobs.return_freed_memory(Radiograph.from_array(np.zeros((512, 512), np.float32)))
    assert trims == []
    jobs.return_freed_memory(Radiograph.from_array(np.zeros((2048, 2048), np.float32)))
    assert trims == [1]
