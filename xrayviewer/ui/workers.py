"""The one pattern for background work: a QRunnable holding a signals QObject, with cooperative cancel.

Modelled on superqt's `thread_worker` and Orange's `concurrent.py`. The work function never touches Qt
widgets; it reports through the signals, which Qt delivers on the GUI thread to slots of GUI-thread QObjects.

    worker = Worker(fn, *args, **kwargs)        # fn(*args, progress=..., cancel=..., **kwargs) if it asks for them
    worker.signals.returned.connect(self._on_result)   # connect bound methods of GUI QObjects, not lambdas
    start_worker(worker)
    worker.cancel()                             # sets the event; fn checks `cancel.is_set()` between steps
"""

from __future__ import annotations

import ctypes
import inspect
import os
import sys
import itertools
import threading
import traceback
import weakref
from typing import Any, Callable

import shiboken6
from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal

_ids = itertools.count(1)
_live: "weakref.WeakSet[Worker]" = weakref.WeakSet()
_finished = 0       # workers whose end reached the GUI thread (ui/gc_collector returns freed memory after work)


def _released(*_args: Any, **_kwargs: Any) -> None:
    """What a finished worker's function becomes (see Worker.release_payload)."""


class Cancelled(Exception):
    """Raised inside work functions (via `check_cancel`) to stop early; reported as `aborted`, not an error."""


class WorkerSignals(QObject):
    started = Signal(object)        # worker id
    progress = Signal(object)       # whatever fn passes to progress(...)
    returned = Signal(object)       # fn's return value
    errored = Signal(object)        # the exception (BaseException), with .traceback_text attached
    aborted = Signal(object)        # worker id, after a cooperative cancel
    finished = Signal(object)       # worker id, always last


class Worker(QRunnable):
    """Runs `fn` on a thread pool. `progress` and `cancel` are passed when fn's signature names them.

    Lifetime: the runnable is autoDelete (Qt's default). PySide6's QThreadPool.start keeps a reference to the Python
    object until the C++ runnable is deleted, so with autoDelete off every finished Worker stayed alive for the
    pool's life (~4 per browsed image). With autoDelete on, the pool deletes the C++ runnable on its thread once
    run() has returned, and drops that reference; the Python object (its signals QObject, cancel and done events)
    stays usable for as long as callers hold it. `start_worker` keeps it until both its `finished` signal reached
    the GUI thread and the pool has deleted the C++ runnable, so the last reference, and with it the signals
    QObject, always goes on the GUI thread, never on the pool thread.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, tag: Any = None, **kwargs: Any):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.id = next(_ids)
        self.tag = tag                       # caller's request tag (e.g. (path, model, method)): stale-result checks
        self.signals = WorkerSignals()
        self.cancel_event = threading.Event()
        self.done = threading.Event()
        self.start_returned = threading.Event()   # see start_worker
        self.start_returned.set()
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        self._wants_progress = "progress" in params
        self._wants_cancel = "cancel" in params

    def cancel(self) -> None:
        """Cooperative: the function stops at its next check. Safe to call from any thread."""
        self.cancel_event.set()

    @property
    def is_cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def release_payload(self) -> None:
        """Let go of the function and its arguments once they are no longer needed.

        Callers keep their last worker (LatestRequest.current, a dialog's worker) after it finished; without this,
        the images in its arguments would stay alive with it (found by benchmarks/bench_app.py memory when finished
        workers were never freed: one full-size image kept per image browsed).
        """
        self.fn, self.args, self.kwargs = _released, (), {}

    def run(self) -> None:  # runs on a pool thread
        self.start_returned.wait()
        _prepare_pool_thread()
        sig = self.signals
        try:
            sig.started.emit(self.id)
            kwargs = dict(self.kwargs)
            if self._wants_progress:
                kwargs["progress"] = sig.progress.emit
            if self._wants_cancel:
                kwargs["cancel"] = self.cancel_event
            result = self.fn(*self.args, **kwargs)
            if self.cancel_event.is_set():
                sig.aborted.emit(self.id)
            else:
                sig.returned.emit(result)
        except Cancelled:
            sig.aborted.emit(self.id)
        except BaseException as exc:  # noqa: BLE001 - everything is reported, nothing escapes the pool thread
            exc.traceback_text = traceback.format_exc()  # type: ignore[attr-defined]
            try:
                sig.errored.emit(exc)
            except RuntimeError:  # receiver gone during shutdown
                pass
        finally:
            self.release_payload()
            self.done.set()
            try:
                sig.finished.emit(self.id)
            except RuntimeError:
                pass


_prepared = threading.local()
BACKGROUND_NICE = 4     # pool threads yield the CPU to the GUI thread (Linux; threads TensorFlow starts inherit it)


def _prepare_pool_thread() -> None:
    """Once per pool thread: keep its Python thread state alive between runs, and lower its CPU priority.

    PySide creates a Python thread state for each run() on a Qt pool thread and deletes it afterwards; TensorFlow's
    pybind11 code remembers the thread state of the thread and later re-acquires the deleted one (a segfault the
    second time TensorFlow traces on that thread). One extra, never released PyGILState_Ensure per thread keeps a
    single thread state for the thread's life. A slightly lower priority keeps the window's event loop on time
    when decoding and TensorFlow keep both cores busy.
    """
    if getattr(_prepared, "done", False):
        return
    _prepared.done = True
    ctypes.pythonapi.PyGILState_Ensure()
    if sys.platform.startswith("linux"):   # elsewhere PRIO_PROCESS with a thread id would name a process
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE))
        except OSError:
            pass


def check_cancel(cancel: threading.Event | None) -> None:
    """Call between steps of a long job."""
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def start_worker(worker: Worker, pool: QThreadPool | None = None, priority: int = 0) -> Worker:
    """Queue the worker; keeps it alive until it finishes. Higher `priority` runs first among queued workers."""
    _live.add(worker)
    holder = _Keep.hold(worker)
    worker._holder = holder  # type: ignore[attr-defined]  # lets `discard` release a worker that never runs
    worker.signals.finished.connect(holder.release)
    worker.pool = pool or QThreadPool.globalInstance()  # type: ignore[attr-defined]
    # PySide records the pool's reference to the runnable after QThreadPool.start returns; a worker that finished
    # and was deleted before that (a quick one, on an idle pool) would keep that reference forever. run() waits.
    worker.start_returned.clear()
    try:
        worker.pool.start(worker, priority)
    finally:
        worker.start_returned.set()
    return worker


def _take_from_queue(worker: Worker) -> bool:
    """Take a worker that has not started off its pool's queue; False when it runs, ran, or was never queued."""
    pool = getattr(worker, "pool", None)
    if pool is None or worker.done.is_set():
        return False
    try:
        taken = pool.tryTake(worker)
    except RuntimeError:   # it finished meanwhile and its pool deleted the C++ runnable
        return False
    if taken:   # now ours (Qt hands a taken runnable to the caller): delete the C++ side, which never ran
        shiboken6.delete(worker)
    return taken


def discard(worker: Worker) -> None:
    """Cancel a worker; if it is still queued, take it off the queue so it never runs (reported as aborted)."""
    worker.cancel()
    if _take_from_queue(worker):
        worker.release_payload()
        worker.done.set()
        worker._holder.release()  # type: ignore[attr-defined]
        worker.signals.aborted.emit(worker.id)
        worker.signals.finished.emit(worker.id)


class LatestRequest:
    """One slot of background work where the newest request wins (labelme's save writer, superqt's `quit`).

    `submit(worker)` discards the previous worker of this slot — unqueued if it has not started, cancelled if it
    runs — so a user flipping through 100 images never waits behind 99 stale requests. Callers still compare the
    result's tag with what they want now: a cancelled worker may already have returned.
    """

    def __init__(self, pool: QThreadPool | None = None, priority: int = 0):
        self.pool, self.priority = pool, priority
        self.current: Worker | None = None

    def submit(self, worker: Worker) -> Worker:
        self.cancel()
        self.current = worker
        return start_worker(worker, self.pool, self.priority)

    def cancel(self) -> None:
        if self.current is not None:
            discard(self.current)
            self.current = None

    @property
    def busy(self) -> bool:
        return self.current is not None and not self.current.done.is_set()


class _Keep(QObject):
    """Strong references to started workers, dropped on the GUI thread once their pool thread is done with them.

    `_held`: queued or running. `_finishing`: their `finished` signal has been handled, but the pool thread may
    still be returning from run() (the C++ runnable is deleted right after): kept until that deletion is seen, so
    the pool thread never drops the last reference.
    """

    _held: set["_Keep"] = set()
    _finishing: list[Worker] = []
    _reap_scheduled = False

    def __init__(self, worker: Worker):
        super().__init__()
        self.worker = worker

    @classmethod
    def hold(cls, worker: Worker) -> "_Keep":
        keep = cls(worker)
        cls._held.add(keep)
        return keep

    def release(self, *_: Any) -> None:
        global _finished
        _Keep._held.discard(self)
        # Break worker -> signals -> (C++ connection) -> self -> worker: Python's GC cannot see through the
        # connection, so without this every finished worker, and the images in its arguments, stayed alive.
        worker, self.worker = self.worker, None
        if worker is not None:
            _finished += 1
            if shiboken6.isValid(worker):
                _Keep._finishing.append(worker)
        _Keep.reap()

    @classmethod
    def reap(cls) -> None:
        """Drop finished workers whose C++ runnable their pool has deleted (GUI thread); look again soon if some
        pool thread is still returning from run()."""
        cls._finishing = [w for w in cls._finishing if shiboken6.isValid(w)]
        if cls._finishing and not cls._reap_scheduled:
            cls._reap_scheduled = True
            QTimer.singleShot(REAP_RETRY_MS, cls._reap_again)

    @classmethod
    def _reap_again(cls) -> None:
        cls._reap_scheduled = False
        cls.reap()


REAP_RETRY_MS = 20


def finished_count() -> int:
    """How many workers have finished so far (GUI-thread count; tells housekeeping whether work happened)."""
    return _finished


def active_workers() -> list[Worker]:
    """Workers started and not yet finished (for leak checks in tests and clean shutdown)."""
    return [w for w in list(_live) if not w.done.is_set()]


def cancel_all_and_wait(timeout_ms: int = 3000) -> bool:
    """On quit: ask every worker to stop, then wait for their pools. True when all stopped in time."""
    pools = {id(QThreadPool.globalInstance()): QThreadPool.globalInstance()}
    for w in active_workers():
        pool = getattr(w, "pool", None)
        if pool is not None:
            pools[id(pool)] = pool
        discard(w)
    return all([pool.waitForDone(timeout_ms) for pool in pools.values()])


def exit_now_if_work_lingers(code: int) -> None:
    """At the very end of the app: when a worker outlived `cancel_all_and_wait` (a step that cannot be interrupted,
    such as importing TensorFlow while a model loads), end the process here with `code`. Python's teardown with
    such a thread still running crashed the process (SIGSEGV at exit: the window closed or `--screenshot` failed
    while the model was still loading on a busy machine). Settings were saved by then; only the teardown is skipped."""
    if active_workers():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
