"""QApplication set-up, the window's start, and screenshot mode (`--open PATH [--select FILE] --screenshot OUT`).

The window is shown first; the model (TensorFlow) loads afterwards in a worker, so the app is on screen at once.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from PySide6.QtCore import QObject, QTimer
from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication

from xrayviewer import APP_NAME, __version__
from xrayviewer.paths import RESOURCES_DIR

SCREENSHOT_TIMEOUT_S = 180
BADGE_WAIT_S = 30      # after the selected image is shown, wait this long at most for the folder's badges


def app_icon() -> QIcon:
    return QIcon(str(RESOURCES_DIR / "xrayviewer.svg"))


def dark_palette() -> QPalette:
    p = QPalette()
    colours = {
        QPalette.ColorRole.Window: "#1b2128", QPalette.ColorRole.WindowText: "#dde3e9",
        QPalette.ColorRole.Base: "#14191f", QPalette.ColorRole.AlternateBase: "#252d36",
        QPalette.ColorRole.Text: "#dde3e9", QPalette.ColorRole.Button: "#232a32",
        QPalette.ColorRole.ButtonText: "#dde3e9", QPalette.ColorRole.Highlight: "#2f6fbf",
        QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#252d36",
        QPalette.ColorRole.ToolTipText: "#eef2f5", QPalette.ColorRole.Link: "#7fb4ff",
        QPalette.ColorRole.PlaceholderText: "#8d99a6", QPalette.ColorRole.BrightText: "#ffffff",
    }
    for role, colour in colours.items():
        p.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b7580"))
    return p


def configure_app(app: QApplication) -> None:
    """Name, icon, Fusion style with the dark palette and resources/style.qss (also used by tests)."""
    # Workers run Python-heavy TensorFlow tracing; a shorter GIL switch interval (default 5 ms) lets the GUI
    # thread, which needs the GIL many times per event-loop turn, get it back quickly.
    sys.setswitchinterval(0.001)
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName(APP_NAME)
    app.setApplicationVersion(__version__)
    app.setOrganizationName(APP_NAME)
    app.setDesktopFileName("xrayviewer")
    app.setWindowIcon(app_icon())
    app.setStyle("Fusion")
    app.setPalette(dark_palette())
    qss = RESOURCES_DIR / "style.qss"
    if qss.is_file():
        app.setStyleSheet(qss.read_text(encoding="utf-8"))


class ScreenshotMode(QObject):
    """Waits until the selected image's prediction and heatmap are on screen, saves window.grab(), quits.

    Exit code 0 on success; 1 with the reason on stderr when the file cannot be read, the model cannot be loaded,
    the folder has no radiographs, or nothing is shown within the timeout.
    """

    def __init__(self, window, out: str | Path, select: str | Path | None = None,
                 timeout_s: float = SCREENSHOT_TIMEOUT_S):
        super().__init__(window)
        self.window, self.out = window, Path(out)
        self.select = os.path.realpath(Path(select).expanduser()) if select else None
        self.exit_code: int | None = None
        self._shown_at: float | None = None
        window.displayComplete.connect(self._on_complete)
        window.imageFailed.connect(self._on_image_failed)
        window.folderScanned.connect(self._on_scanned)
        window.model_service.loadFailed.connect(self._on_model_failed)
        self._timer = QTimer(self, singleShot=True)
        self._timer.timeout.connect(self._on_timeout)
        self._timer.start(int(timeout_s * 1000))

    def _target(self) -> str | None:
        current = self.window.current_path()
        return self.select or (os.path.realpath(current) if current else None)

    def _on_complete(self, path: str) -> None:
        if self.exit_code is None and os.path.realpath(path) == self._target() and self._shown_at is None:
            self._shown_at = time.monotonic()
            self._poll_badges()

    def _poll_badges(self) -> None:
        """The list reads better with its badges: give the background classification a little time."""
        if self.exit_code is not None:
            return
        waiting = self.window.session.background_remaining and time.monotonic() - self._shown_at < BADGE_WAIT_S
        QTimer.singleShot(250 if waiting else 300, self._poll_badges if waiting else self._save)

    def _save(self) -> None:
        if self.exit_code is not None:
            return
        ex = self.window.current_explained()
        if ex is None or os.path.realpath(ex.path) != self._target():   # moved on meanwhile: wait again
            self._shown_at = None
            return
        QApplication.processEvents()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.window.grab().save(str(self.out)):
            print(f"screenshot saved: {self.out}")
            self._finish(0)
        else:
            self.fail(f"could not write the screenshot to {self.out}")

    def _on_image_failed(self, path: str, message: str) -> None:
        if os.path.realpath(path) == self._target():
            self.fail(f"{path}: {message}")

    def _on_scanned(self, count: int) -> None:
        if count == 0:
            self.fail("no radiographs found to show")

    def _on_model_failed(self, path: str, message: str) -> None:
        self.fail(f"could not load the model {path}: {message}")

    def _on_timeout(self) -> None:
        self.fail(f"timed out: the prediction and heatmap were not shown within {self._timer.interval() // 1000} s")

    def fail(self, reason: str) -> None:
        if self.exit_code is None:
            print(f"screenshot failed: {reason}", file=sys.stderr)
            self._finish(1)

    def _finish(self, code: int) -> None:
        self.exit_code = code
        self._timer.stop()
        QApplication.instance().exit(code)


def run_app(args) -> int:
    """Open the window (and with args.screenshot, take the screenshot and exit). Returns the exit code."""
    from xrayviewer.ui.gc_collector import fix_mmap_threshold, install_gui_thread_collector, limit_malloc_arenas
    from xrayviewer.ui.main_window import MainWindow

    limit_malloc_arenas()   # before Qt and TensorFlow start their threads
    fix_mmap_threshold()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    configure_app(app)
    install_gui_thread_collector(app)
    window = MainWindow()
    screenshot = None
    if getattr(args, "screenshot", None):
        window.resize(1400, 880)   # the same frame every time, whatever the saved geometry
        screenshot = ScreenshotMode(window, args.screenshot, getattr(args, "select", None))
    window.show()

    def start() -> None:
        if getattr(args, "open", None):
            window.open_path(args.open, getattr(args, "select", None))
        if screenshot is not None and screenshot.exit_code is not None:
            return   # nothing to show: no need to load TensorFlow
        have_model = window.load_initial_model(getattr(args, "model", None))
        if screenshot is not None and not have_model:
            screenshot.fail("no model bundle to load (models/default is missing; pass --model DIR)")

    QTimer.singleShot(0, start)   # after the first paint: the window is on screen before TensorFlow loads
    # Ctrl+C in the terminal closes the window (Python only sees signals when the event loop lets it run)
    signal.signal(signal.SIGINT, lambda *_: window.close())
    wake = QTimer(window, interval=250)
    wake.timeout.connect(lambda: None)
    wake.start()
    code = app.exec()
    window.shutdown(save_settings=screenshot is None)
    if screenshot is not None and screenshot.exit_code is not None:
        return screenshot.exit_code
    return int(code)
