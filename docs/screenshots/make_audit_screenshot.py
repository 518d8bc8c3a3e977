"""Regenerates the README's shortcut-audit screenshot (audit-dialog.png) on the real radiographs in the app's look.

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots/make_audit_screenshot.py

What it does:
- opens the real MainWindow (configure_app: Fusion, dark palette, style.qss) with the shipped models/default (and the
  shipped lung model) as the active model, and its Model › Audit… dialog at 1100 x 860;
- sets the labelled folder to ../shared/data/cxr (all four class folders: "other" is not a class of the model and
  counts for attention only) and "Images per class" to 12 (drawn with the audit's fixed seed, so the same 46 images
  every run), and writes the report into a temporary folder;
- starts the audit, waits for it to finish and saves audit-dialog.png: the finished dialog with its headline numbers,
  verdict and the Summary tab scrolled to the top. The headline numbers are printed too.

Options: --data DIR (default: the shared data found by xrayviewer.paths), --out DIR (default: this folder).
Settings and cache go to a temporary folder (XRAYVIEWER_SETTINGS_DIR, XRAYVIEWER_CACHE_DIR), so a person's own
settings are never read or changed; the temporary folder, with the audit report, is deleted at the end. Nothing is
written into the repository except the PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

SIZE = (1100, 860)
IMAGES_PER_CLASS = 12
TIMEOUT_S = 900            # the whole audit; 46 images take well under a minute on 2 cores


def wait_until(app, condition, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="the cxr folder (default: ../shared/data/cxr)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()

    from xrayviewer.paths import DEFAULT_MODEL_DIR, shared_data_dir

    cxr = args.data or (shared_data_dir() / "cxr" if shared_data_dir() else None)
    if cxr is None or not cxr.is_dir():
        print("no shared data: pass --data DIR (a folder with one sub-folder per class)", file=sys.stderr)
        return 2
    box = Path(tempfile.mkdtemp(prefix="xrayviewer-audit-shot-"))
    os.environ["XRAYVIEWER_SETTINGS_DIR"] = str(box / "settings")
    os.environ["XRAYVIEWER_CACHE_DIR"] = str(box / "cache")
    try:
        return shoot(cxr, DEFAULT_MODEL_DIR, box / "audit-report", args.out)
    finally:
        shutil.rmtree(box, ignore_errors=True)


def shoot(cxr: Path, model_dir: Path, report_dir: Path, out: Path) -> int:
    from PySide6.QtWidgets import QApplication

    from xrayviewer.ui.app import configure_app
    from xrayviewer.ui.main_window import MainWindow
    from xrayviewer.ui.workers import active_workers

    app = QApplication.instance() or QApplication(sys.argv[:1])
    configure_app(app)
    window = MainWindow()
    window.resize(1400, 880)
    window.show()
    if not window.load_initial_model(model_dir):
        print(f"cannot load {model_dir}", file=sys.stderr)
        return 1
    wait_until(app, lambda: window.model_service.classifier is not None, "the active model", 120)

    next(a for a in window.menu("Model").actions() if a.text() == "Audit…").trigger()
    dialog = window._audit_launcher.dialog
    dialog.resize(*SIZE)
    dialog.set_folder(cxr)
    wait_until(app, lambda: dialog.counts is not None, "the image count", 120)
    dialog.limit.setValue(IMAGES_PER_CLASS)
    dialog.out_edit.setText(str(report_dir))
    runner = dialog.runner
    assert runner.start_button.isEnabled(), dialog.estimate.text()

    runner.start_button.click()
    wait_until(app, lambda: not runner.is_running() and runner.state != "running", "the audit", TIMEOUT_S)
    wait_until(app, lambda: not active_workers(), "the workers to stop", 60)
    if runner.state != "done":
        print(runner.status.text(), file=sys.stderr)
        return 1
    results = runner.results
    results.tabs.setCurrentIndex(0)                                  # Summary
    results.summary_browser.verticalScrollBar().setValue(0)          # its first lines, not wherever it scrolled to
    app.processEvents()

    out.mkdir(parents=True, exist_ok=True)
    dialog.grab().save(str(out / "audit-dialog.png"))
    print(f"saved {out / 'audit-dialog.png'}")
    print(dialog.model_label.text())
    print(runner.status.text())
    print(f"mean lung attention {results.mean_attention.value.text()}, "
          f"attention mostly outside the lungs {results.outside.value.text()}")
    for key, text in results.HEADLINE_ROWS:
        print(f"{text}: accuracy {results.cells[(key, 'accuracy')].text()}, "
              f"macro AUC {results.cells[(key, 'macro_auc')].text()}")
    print(results.verdict.text())

    dialog.close()
    window.shutdown(save_settings=False)
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
