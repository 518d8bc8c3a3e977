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


def _skip_pyside_feature_scan_on_import() -> None:
    """PySide6 hooks every import, in every thread, and reads the new module's whole source (inspect.getsource)
    to learn whether it says `from __feature__ import ...`. Our workers import lazily (PIL's format plugins,
    matplotlib for the case report, TensorFlow), and that scan running in a worker while the GUI thread was inside
    PySide crashed the process with a segfault in the GUI thread (faulthandler: worker in
    shibokensupport/feature.py _mod_uses_pyside -> linecache, GUI thread in an enum call of the event loop).
    XRayViewer uses no __feature__, so every module is recorded as not using one, without reading its source
    (the answer PySide gives any module that does not mention it)."""
    import PySide6.QtCore  # noqa: F401 - installs the import hook and its module

    feature = sys.modules.get("shibokensupport.feature")
    if feature is not None and hasattr(feature, "_mod_uses_pyside"):
        feature._mod_uses_pyside = lambda module: False


_guard_singletons_against_pyside_refcount_bug()
_skip_pyside_feature_scan_on_import()
