"""Shared test set-up: offscreen Qt, private data/cache dirs, and the real radiographs in ../shared (or a skip)."""

from __future__ import annotations

import ast
import csv
import gc
import os
import sys
import threading
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

from xrayviewer.paths import shared_data_dir  # noqa: E402


def _serialize_ast_parse() -> None:
    """CPython 3.11 before 3.11.8 keeps the AST constructor's recursion depth in interpreter-wide state
    (CPython gh-106905). A garbage collection inside one thread's ast.parse runs finalizers (Python code), the GIL
    can pass to another thread that parses too, and the first parse fails with "SystemError: AST constructor
    recursion depth mismatch". On 3.11 every traceback formatted in a worker parses (for its ^^^ carets), and
    pytest parses the test's source to report a failure while that test's workers still run: the race turned a
    failing test into an INTERNALERROR that ended the whole session. One parse at a time, with collection held
    off until it returns, closes it; nothing is caught or retried."""
    if sys.version_info[:2] != (3, 11) or sys.version_info >= (3, 11, 8):
        return
    parse, lock = ast.parse, threading.RLock()

    def serialized_parse(*args, **kwargs):
        with lock:
            collecting = gc.isenabled()
            gc.disable()
            try:
                return parse(*args, **kwargs)
            finally:
                if collecting:
                    gc.enable()

    ast.parse = serialized_parse


_serialize_ast_parse()


def pytest_runtest_setup(item):
    """Collect the previous tests' garbage on the GUI thread before a Qt test starts its workers.

    A finished test's windows are Python-owned and sit in reference cycles (window -> controller -> window, the
    stand-ins' model services...), so they die when the cyclic GC runs, in whichever thread allocates then. That was
    often a worker of the next test (matplotlib building the case report allocates a lot), which then ran the C++
    destructors of GUI-thread QObjects and widgets on the worker thread while the GUI thread's event loop used them:
    SIGSEGV in test_results_view.py::test_case_report_and_heatmap_export_for_current_image after test_ui.py
    (deterministic on an idle machine; gone with this collection)."""
    if "qtbot" in item.fixturenames:
        gc.collect()

SHARED = shared_data_dir()
SKIP_SHARED = "../shared/data is absent: the real radiographs are not here (the synthetic twin of this test runs instead)"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(autouse=True, scope="session")
def _private_dirs(tmp_path_factory):
    """User models and caches go to a temp dir, never the developer's real ones."""
    root = tmp_path_factory.mktemp("xrayviewer-home")
    os.environ.setdefault("XRAYVIEWER_DATA_DIR", str(root / "data"))
    os.environ.setdefault("XRAYVIEWER_CACHE_DIR", str(root / "cache"))
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip with the reason."""
    if SHARED is None:
        pytest.skip(SKIP_SHARED)
    return SHARED


@pytest.fixture(scope="session")
def cxr_manifest(shared_data) -> list[dict]:
    with open(shared_data / "cxr" / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Screenshots and figures tests save for a person to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def main_window(qtbot, tmp_path, monkeypatch):
    """The real MainWindow in the app's look, shown offscreen, with its settings in a temp dir."""
    from PySide6.QtWidgets import QApplication

    from xrayviewer.ui.app import configure_app
    from xrayviewer.ui.main_window import MainWindow

    monkeypatch.setenv("XRAYVIEWER_SETTINGS_DIR", str(tmp_path / "settings"))
    configure_app(QApplication.instance())
    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1400, 880)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close()
