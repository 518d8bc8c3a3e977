"""`xrayviewer predict PATH...`: one CSV row per image (path, predicted, p_<class>..., ground_truth, correct, ..., error).

Ground truth comes from a manifest.csv label column or a parent folder named like a class (reports.ground_truth).

Unreadable files get a row with the error and the run goes on. Exit 0 when every file was read, 1 when some failed,
2 on usage errors (no such model, nothing to classify, unwritable output). Progress goes to stderr so the CSV on
stdout stays clean.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator

from xrayviewer import DISCLAIMER


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=f"{help_text}. {DISCLAIMER}")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders of images")
    parser.add_argument("--model", metavar="DIR", help="model bundle folder (default: the shipped models/default)")
    parser.add_argument("--recursive", "-r", action="store_true", help="also classify images in sub-folders")
    parser.add_argument("--csv", metavar="OUT", help="write the CSV here instead of to standard output")
    parser.add_argument("--heatmaps", metavar="DIR",
                        help="write a Grad-CAM overlay PNG per image (predicted class) into this folder")
    parser.add_argument("--lungs", action=argparse.BooleanOptionalAction, default=None,
                        help="add lung_attention (share of the heatmap inside the lungs) using the lung model; "
                             "default: when the shipped lung model is present")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per inference batch")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    return parser


def _usage_error(message: str) -> int:
    print(f"xrayviewer predict: error: {message}", file=sys.stderr)
    return 2


def _expand(paths: list[str], recursive: bool) -> Iterator[Path]:
    """Files as given (missing ones too: they get an error row), folders expanded to the images inside."""
    from xrayviewer.imaging import iter_radiographs

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from iter_radiographs(path, recursive=recursive)
        else:
            yield path


def _heatmap_name(path: Path, predicted: str, used: set[str]) -> str:
    stem = f"{path.stem}_{predicted}_gradcam"
    name, n = f"{stem}.png", 1
    while name in used:  # same file name from two folders
        n += 1
        name = f"{stem}_{n}.png"
    used.add(name)
    return name


def _write_overlay(item, out_dir: Path, used: set[str]) -> None:
    import cv2
    import numpy as np

    from xrayviewer.imaging.display import overlay

    analysis = item.analysis
    rgb = overlay(item.radiograph.pixels, analysis.heatmap())
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise OSError("PNG encoding failed")
    # tofile, not imwrite: imwrite cannot write to non-ASCII paths on some platforms
    encoded.tofile(str(out_dir / _heatmap_name(item.path, analysis.predicted, used)))


class _ProgressLine:
    """`[12/40] name` on stderr: rewritten in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = time.monotonic()

    def __call__(self, event: dict) -> None:
        if self.quiet:
            return
        total = f"/{event['total']}" if event.get("total") else ""
        text = f"[{event['done']}{total}] {Path(event['path']).name}"
        now = time.monotonic()
        if self.tty:
            print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
        elif now - self.last > 5.0:
            print(text, file=sys.stderr, flush=True)
            self.last = now

    def finish(self) -> None:
        if self.tty and not self.quiet:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from xrayviewer.paths import DEFAULT_MODEL_DIR, LUNG_MODEL_DIR

    if args.batch_size < 1:
        return _usage_error("--batch-size must be at least 1")
    model_dir = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    if not args.model and not (model_dir / "model.json").is_file():
        return _usage_error(f"the default model is missing ({model_dir}). Build it with "
                            "`python training/train_default.py`, or choose a model with --model DIR.")
    csv_out = Path(args.csv) if args.csv else None
    if csv_out is not None and (csv_out.is_dir() or not csv_out.parent.is_dir()):
        return _usage_error(f"cannot write the CSV to {csv_out}: " + (
            "that is a folder" if csv_out.is_dir() else f"the folder {csv_out.parent} does not exist"))
    heatmap_dir = Path(args.heatmaps) if args.heatmaps else None
    if heatmap_dir is not None:
        try:
            heatmap_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            return _usage_error(f"cannot create the heatmap folder {heatmap_dir}: {err.strerror or err}")

    from xrayviewer.model.bundle import BundleError
    from xrayviewer.model.classifier import Classifier

    try:
        classifier = Classifier.load(model_dir)
    except BundleError as err:
        return _usage_error(str(err))

    lungs = None
    want_lungs = args.lungs if args.lungs is not None else (LUNG_MODEL_DIR / "model.json").is_file()
    if want_lungs:
        try:
            from xrayviewer.model.lungs import LungSegmenter

            lungs = LungSegmenter.load(LUNG_MODEL_DIR)
        except Exception as err:  # a missing or damaged lung model only costs the lung_attention column
            if args.lungs:
                return _usage_error(f"the lung model cannot be used: {err}")
            print(f"note: lung_attention left empty, the lung model cannot be used: {err}", file=sys.stderr)

    from xrayviewer.model.batch import analyze_paths, result_row
    from xrayviewer.reports.ground_truth import ground_truth_labels
    from xrayviewer.results import write_results_csv

    paths = list(_expand(args.paths, args.recursive))
    truth = ground_truth_labels(paths, classifier.classes)   # the same rule as the results table's export

    progress = _ProgressLine(args.quiet)
    counts = {"files": 0, "failed": 0}
    used_names: set[str] = set()

    def rows():
        for item in analyze_paths(classifier, paths, cams=bool(heatmap_dir or lungs),
                                  keep_radiographs=heatmap_dir is not None, lungs=lungs,
                                  batch_size=args.batch_size, progress=progress):
            counts["files"] += 1
            if item.error:
                counts["failed"] += 1
            elif heatmap_dir is not None:
                try:
                    _write_overlay(item, heatmap_dir, used_names)
                except OSError as err:
                    print(f"note: no heatmap for {item.path}: {err}", file=sys.stderr)
                item.radiograph = None  # let the original go before the next batch
            yield result_row(item, truth.get(Path(item.path), ""))

    try:
        if csv_out is None:
            write_results_csv(rows(), None, classifier.classes, stream=sys.stdout)
        else:
            write_results_csv(rows(), csv_out, classifier.classes)
    except OSError as err:  # e.g. disk full while writing the CSV
        progress.finish()
        print(f"xrayviewer predict: error: writing the results failed: {err.strerror or err}", file=sys.stderr)
        return 1
    progress.finish()
    if counts["files"] == 0:
        return _usage_error("no images found in " + ", ".join(args.paths))
    if not args.quiet:
        print(f"{counts['files']} files: {counts['files'] - counts['failed']} classified, {counts['failed']} "
              f"could not be read" + (f"; results in {csv_out}" if csv_out else ""), file=sys.stderr)
    return 1 if counts["failed"] else 0
