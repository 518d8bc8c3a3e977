"""The background-work pattern keeps no finished worker alive, frees each on the GUI thread, and still cancels."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time

import pytest
from PySide6.QtCore import QObject, QThreadPool

from xrayviewer.ui.workers import LatestRequest, Worker, active_workers, check_cancel, discard, start_worker

RUNS = 300


def live_workers() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Worker))


class Receiver(QObject):
    """A GUI-thread QObject, as the app's slots are."""

    def __init__(self):
        super().__init__()
        self.returned: list = []
        self.aborted: list = []
        self.finished: list = []

    def on_returned(self, value) -> None:
        self.returned.append(value)

    def on_aborted(self, worker_id) -> None:
        self.aborted.append(worker_id)

    def on_finished(self, worker_id) -> None:
        self.finished.append(worker_id)


def square(x: int) -> int:
    return x * x


@pytest.fixture
def pool(qtbot):
    pool = QThreadPool()
    pool.setMaxThreadCount(2)
    yield pool
    pool.waitForDone(10_000)


def test_finished_workers_are_freed_on_the_gui_thread(qtbot, pool):
    before = live_workers()
    receiver = Receiver()
    freed_on: list[str] = []
    for i in range(RUNS):
        worker = Worker(square, i)
        worker.signals.returned.connect(receiver.on_returned)
        worker.signals.finished.connect(receiver.on_finished)
        # destroyed is emitted by the thread that deletes the signals QObject
        worker.signals.destroyed.connect(lambda *_: freed_on.append(threading.current_thread().name))
        start_worker(worker, pool)
        del worker
    qtbot.waitUntil(lambda: len(receiver.finished) == RUNS, timeout=30_000)
    assert sorted(receiver.returned) == [i * i for i in range(RUNS)]
    # the pool deletes each C++ runnable right after run(); the GUI thread then drops the last reference
    qtbot.waitUntil(lambda: live_workers() <= before, timeout=5_000)
    assert active_workers() == []
    qtbot.waitUntil(lambda: len(freed_on) == RUNS, timeout=5_000)
    assert set(freed_on) == {threading.main_thread().name}


def test_a_slot_holds_only_its_last_worker(qtbot, pool):
    """The viewer's pattern (newest request wins), many times over: live workers stay bounded."""
    before = live_workers()
    slot = LatestRequest(pool)
    receiver = Receiver()
    for i in range(RUNS):
        worker = Worker(square, i)
        worker.signals.finished.connect(receiver.on_finished)
        slot.submit(worker)
    qtbot.waitUntil(lambda: not active_workers(), timeout=30_000)
    qtbot.waitUntil(lambda: live_workers() <= before + 1, timeout=5_000)
    assert slot.current is not None and slot.current.done.is_set()
    assert slot.current.signals.finished is not None   # the last worker stays usable while its slot holds it


def test_discarded_queued_workers_never_run_and_are_freed(qtbot):
    before = live_workers()
    pool = QThreadPool()
    pool.setMaxThreadCount(1)
    gate = threading.Event()
    blocker = start_worker(Worker(gate.wait, 30), pool)
    receiver = Receiver()
    ran: list[int] = []
    queued = []
    for i in range(50):
        worker = Worker(ran.append, i)
        worker.signals.aborted.connect(receiver.on_aborted)
        worker.signals.finished.connect(receiver.on_finished)
        queued.append(start_worker(worker, pool))
    for worker in queued:
        discard(worker)
    assert len(receiver.aborted) == len(receiver.finished) == 50   # reported at once, not when the queue runs
    assert all(w.done.is_set() for w in queued)
    gate.set()
    qtbot.waitUntil(lambda: blocker.done.is_set(), timeout=10_000)
    pool.waitForDone(10_000)
    assert ran == []
    del queued, worker, blocker
    qtbot.waitUntil(lambda: live_workers() <= before, timeout=5_000)


def test_cooperative_cancel_of_a_running_worker(qtbot, pool):
    started = threading.Event()

    def steps(cancel=None):
        started.set()
        for _ in range(1000):
            check_cancel(cancel)
            time.sleep(0.005)
        return "ran to the end"

    receiver = Receiver()
    worker = Worker(steps)
    worker.signals.returned.connect(receiver.on_returned)
    worker.signals.aborted.connect(receiver.on_aborted)
    worker.signals.finished.connect(receiver.on_finished)
    start_worker(worker, pool)
    assert started.wait(10)
    discard(worker)                    # running: cannot be taken off the queue, so it is asked to stop
    qtbot.waitUntil(lambda: receiver.finished == [worker.id], timeout=10_000)
    assert receiver.aborted == [worker.id] and receiver.returned == []
    assert worker.fn is not steps and worker.args == ()   # released its payload


def test_discarding_a_finished_worker_is_harmless(qtbot, pool):
    receiver = Receiver()
    worker = Worker(square, 3)
    worker.signals.returned.connect(receiver.on_returned)
    worker.signals.finished.connect(receiver.on_finished)
    start_worker(worker, pool)
    qtbot.waitUntil(lambda: receiver.finished == [worker.id], timeout=10_000)
    pool.waitForDone(10_000)           # the pool has deleted the C++ runnable: tryTake would raise
    discard(worker)
    assert receiver.returned == [9] and receiver.finished == [worker.id]


LINGERING_WORK_SCRIPT = """
import sys, time
from PySide6.QtWidgets import QApplication
from xrayviewer.ui.workers import Worker, cancel_all_and_wait, exit_now_if_work_lingers, start_worker
app = QApplication([])
worker = start_worker(Worker(time.sleep, float(sys.argv[1])))    # a step that does not look at its cancel event
time.sleep(0.3)
print("stopped in time:", cancel_all_and_wait(200), flush=True)
exit_now_if_work_lingers(3)
print("returned", flush=True)
"""


@pytest.mark.parametrize("seconds, lingers", [(0.0, False), (30.0, True)])
def test_the_process_ends_at_once_when_a_worker_outlives_the_quit(tmp_path, seconds, lingers):
    """A worker that cannot be interrupted (TensorFlow's import while a model loads) must not be under Python's
    teardown: that crashed with SIGSEGV. The process ends with the app's code, without waiting for the worker."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LINGERING_WORK_SCRIPT, str(seconds)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    if lingers:
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "stopped in time: False" in proc.stdout and "returned" not in proc.stdout
        assert time.perf_counter() - started < 20     # did not wait for the 30 s step
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "stopped in time: True" in proc.stdout and "returned" in proc.stdout
