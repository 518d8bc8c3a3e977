"""Thin Qt layer: views, models, dialogs. Never calls TensorFlow on the GUI thread."""

import sys


def _guard_singletons_against_pyside_refcount_bug() -> None:
    """PySide6 6.12.0 on CPython 3.11 returns None from every void call (processEvents, setText, QThreadPool.start,
    ...) and True from every Signal.emit without taking a reference, so each call drops one reference the process
    does not own. After a few thousand calls None (or True) reaches zero and the interpreter aborts ("Fatal Python
    error: none_dealloc" / "bool_dealloc"): opening a folder of 1 000 files without a model was enough. CPython 3.12+
    makes these singletons immortal; here we give them the same protection by adding 2**40 references (they are
    never freed anyway). Reproduced and guarded by tests/test_robustness_gui.py::test_qt_calls_do_not_exhaust_*.
    """
    if sys.version_info >= (3, 12):
        return
    import ctypes

    for singleton in (None, True, False):
        ctypes.c_ssize_t.from_address(id(singleton)).value += 1 << 40


_guard_singletons_against_pyside_refcount_bug()
