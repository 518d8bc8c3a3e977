"""QApplication set-up and the window's start. (Placeholder until the viewer lands: issue 4 replaces it.)"""

from __future__ import annotations

import sys


def run_app(args) -> int:
    from PySide6.QtWidgets import QApplication, QLabel, QMainWindow

    from xrayviewer import APP_NAME, DISCLAIMER

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName(APP_NAME)
    win = QMainWindow()
    win.setWindowTitle(APP_NAME)
    win.setCentralWidget(QLabel(DISCLAIMER))
    win.resize(1200, 800)
    win.show()
    return app.exec()
