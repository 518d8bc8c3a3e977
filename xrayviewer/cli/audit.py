"""`xrayviewer audit DATASET --model DIR [--out REPORT_DIR] [--limit N]`: shortcut audit of a model.

Writes PNG figures, summary.json and summary.md into REPORT_DIR and prints summary.md. Exit 0 when the report was
written, 1 when it could not be (nothing readable, unwritable folder), 2 on usage errors (bad model, no dataset).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xrayviewer import DISCLAIMER


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help=help_text,
        description=f"{help_text}: lung attention, mean heatmaps, accuracy/AUC with the lungs blacked out and with "
                    f"only the lungs, per source when the folder has a manifest.csv. {DISCLAIMER}")
    parser.add_argument("dataset", metavar="DATASET", help="folder with one sub-folder of images per class")
    parser.add_argument("--model", metavar="DIR", help="model bundle to audit (default: the shipped models/default)")
    parser.add_argument("--lungs", metavar="DIR", help="lung model folder (default: the shipped models/lungs)")
    parser.add_argument("--out", metavar="REPORT_DIR", default="audit-report",
                        help="report folder (default: ./audit-report)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N images per class (seeded random pick)")
    parser.add_argument("--validation-only", action="store_true",
                        help="audit only the model's validation images (listed in its model.json): honest figures "
                             "for a model trained on this folder")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    return parser


def _fail(code: int, message: str) -> int:
    print(f"xrayviewer audit: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from xrayviewer.model.audit import run_audit
    from xrayviewer.model.bundle import BundleError
    from xrayviewer.model.classifier import Classifier
    from xrayviewer.model.lungs import LungSegmenter
    from xrayviewer.paths import DEFAULT_MODEL_DIR, LUNG_MODEL_DIR

    dataset = Path(args.dataset)
    if not dataset.is_dir():
        return _fail(2, f"{dataset} is not a folder (expected one sub-folder of images per class)")
    if args.limit is not None and args.limit < 1:
        return _fail(2, "--limit must be at least 1")
    try:
        classifier = Classifier.load(args.model or DEFAULT_MODEL_DIR)
        segmenter = LungSegmenter.load(args.lungs or LUNG_MODEL_DIR)
    except BundleError as err:
        return _fail(2, str(err))

    def progress(event: dict) -> None:
        if args.quiet:
            return
        if event["kind"] == "image":
            print(f"\r[{event['done'] + 1}/{event['total']}] {Path(event['path']).name[:60]:<60}", end="",
                  file=sys.stderr, flush=True)
        elif event["kind"] == "stage":
            print(f"\n{event['text']}", file=sys.stderr, flush=True)

    only = None
    if args.validation_only:
        split = (classifier.bundle.meta.get("training") or {}).get("split") or {}
        only = (split.get("validation") or {}).get("paths")
        if not only:
            return _fail(2, f"model '{classifier.bundle.name}' lists no validation images in its model.json")
    out = Path(args.out)
    try:
        summary = run_audit(dataset, classifier, segmenter, out, progress=progress, limit=args.limit, only=only)
    except ValueError as err:
        return _fail(1, str(err))
    except OSError as err:
        return _fail(1, f"cannot write the report to {out}: {err.strerror or err}")
    if not summary["images"]:
        return _fail(1, "no image could be read; see summary.json for the reasons")
    print((out / "summary.md").read_text(encoding="utf-8"))
    print(f"report: {out.resolve()}", file=sys.stderr)
    return 0
