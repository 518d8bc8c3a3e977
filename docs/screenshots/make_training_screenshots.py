"""Regenerates the README's training-dialog screenshots on the real radiographs, in the app's real look.

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots/make_training_screenshots.py

What it does:
- builds a temporary folder under /tmp with covid/, normal/ and pneumonia/ holding symlinks to ALL images of those
  classes in ../shared/data/cxr (other/ is left out) and its manifest.csv filtered to those rows, so patient ids
  come from the manifest; the folder is deleted at the end, nothing is copied into the repo;
- opens the real MainWindow (configure_app: Fusion, dark palette, style.qss) with the shipped models/default as the
  active model, and its Model › Train… dialog at 1100 x 760;
- trains with the dialog's default settings (25 epochs, 4 variants, 224 input; seed 42, so the split and the run
  repeat; base features come from the feature cache after the first run);
- saves training-dialog-training.png (grabbed at the epoch before the last, while training still runs) and
  training-dialog-results.png (Metrics tab: the new model beside models/default on the same validation split).

Options: --data DIR (default: the shared data found by xrayviewer.paths), --out DIR (default: this folder).
Settings go to a temporary folder (XRAYVIEWER_SETTINGS_DIR), so a person's own settings are never read or changed.
Nothing is saved as a model.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

CLASSES = ("covid", "normal", "pneumonia")
SIZE = (1100, 760)
TIMEOUT_S = 900            # the whole run; features cached it takes about a minute
EPOCHS_BEFORE_END = 1      # the training shot shows the run this many epochs before its last one


def build_dataset(cxr: Path, root: Path) -> dict[str, int]:
    """root/<class>/ symlinks to every image of CLASSES in cxr, and cxr's manifest.csv reduced to those rows."""
    with open(cxr / "manifest.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        rows = [row for row in reader if row["label"] in CLASSES]
    counts = dict.fromkeys(CLASSES, 0)
    for row in rows:
        target = cxr / row["path"]
        link = root / row["path"]                 # manifest paths are <class>/<file>, relative to the folder
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
        counts[row["label"]] += 1
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return counts


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
    if cxr is None or not (cxr / "manifest.csv").is_file():
        print("no shared data: pass --data DIR (a folder with manifest.csv, covid/, normal/, pneumonia/)",
              file=sys.stderr)
        return 2
    box = Path(tempfile.mkdtemp(prefix="xrayviewer-training-shots-"))
    os.environ["XRAYVIEWER_SETTINGS_DIR"] = str(box / "settings")
    try:
        root = box / "cxr"
        counts = build_dataset(cxr, root)
        print(f"dataset {root}: {counts}")
        return shoot(root, DEFAULT_MODEL_DIR, args.out, sum(counts.values()))
    finally:
        shutil.rmtree(box, ignore_errors=True)   # symlinks only: rmtree removes the links, never their targets


def shoot(root: Path, model_dir: Path, out: Path, n_images: int) -> int:
    from PySide6.QtWidgets import QApplication

    from xrayviewer.ui.app import configure_app
    from xrayviewer.ui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    configure_app(app)
    window = MainWindow()
    window.resize(1400, 880)
    window.show()
    if not window.load_initial_model(model_dir):
        print(f"cannot load {model_dir}", file=sys.stderr)
        return 1
    wait_until(app, lambda: window.model_service.classifier is not None, "the active model", 120)

    next(a for a in window.menu("Model").actions() if a.text() == "Train…").trigger()
    dialog = window._training_launcher.training_dialog
    dialog.resize(*SIZE)
    dialog.data_page.set_folder(root)
    wait_until(app, lambda: dialog.data_page.result is not None, "the folder check", 120)
    found = dialog.data_page.result.dataset
    assert found.ok and sum(found.counts().values()) == n_images, (found.counts(), found.problems)
    assert "manifest.csv" in dialog.settings_page.patient_origin.text(), dialog.settings_page.patient_origin.text()

    started = time.monotonic()
    dialog.start_training()
    grabs: list[tuple[int, object]] = []     # (epoch, QPixmap) while training runs

    def on_progress(event: dict) -> None:
        # connected after the page's own slot: the page already shows this epoch (label, log); draw the live
        # curves now (they redraw on a timer otherwise) and grab the dialog as it is mid-run
        if event.get("kind") == "epoch" and dialog.is_training():
            dialog.training_page.curves.draw_now()     # every epoch so far, on screen before the grab
            grabs.append((int(event["epoch"]), dialog.grab()))

    finished: list[object] = []       # after the dialog's own slots handled the outcome (result or failure)
    dialog.train_worker.signals.progress.connect(on_progress)
    dialog.train_worker.signals.finished.connect(finished.append)
    wait_until(app, lambda: bool(finished), "the training", TIMEOUT_S)
    if dialog.result is None:
        print(dialog.training_page.log.toPlainText(), file=sys.stderr)
        return 1
    wait_until(app, dialog.results_page.save_button.isEnabled, "the results", 300)
    print(f"trained in {time.monotonic() - started:.0f} s: {len(grabs)} epochs")
    app.processEvents()

    last = grabs[-1][0]
    epoch, training_shot = next(g for g in reversed(grabs) if g[0] <= max(1, last - EPOCHS_BEFORE_END))
    out.mkdir(parents=True, exist_ok=True)
    training_shot.save(str(out / "training-dialog-training.png"))
    dialog.results_page.tabs.setCurrentIndex(0)
    app.processEvents()
    dialog.grab().save(str(out / "training-dialog-results.png"))
    print(f"saved {out / 'training-dialog-training.png'} (epoch {epoch} of {last}) and "
          f"{out / 'training-dialog-results.png'}")
    print(dialog.results_page.new_column.summary.text())
    print(dialog.results_page.active_column.summary.text())

    dialog.close()
    window.shutdown(save_settings=False)
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
