"""`xrayviewer report IMAGE [--model DIR] --pdf OUT.pdf [--png OUT.png]`: the one-page case report.

Same page as File › Export › Case report… in the window. Exit 0 when the report was written, 1 when the image cannot
be read or the report not written, 2 on usage errors (no output given, output folder missing, no such model or
class).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xrayviewer import DISCLAIMER


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=f"{help_text}. {DISCLAIMER}")
    parser.add_argument("image", metavar="IMAGE", help="a chest radiograph (PNG, JPEG, DICOM, ...)")
    parser.add_argument("--model", metavar="DIR", help="model bundle folder (default: the shipped models/default)")
    parser.add_argument("--pdf", metavar="OUT.pdf", help="write the report as a one-page A4 PDF")
    parser.add_argument("--png", metavar="OUT.png", help="write the report as a PNG image (150 dpi)")
    parser.add_argument("--class", dest="class_name", metavar="NAME",
                        help="explain this class in the heatmap (default: the predicted class)")
    parser.add_argument("--lungs", action=argparse.BooleanOptionalAction, default=None,
                        help="lung attention and the lung outline from the lung model; default: when the shipped "
                             "lung model is present")
    return parser


def _fail(code: int, message: str) -> int:
    print(f"xrayviewer report: error: {message}", file=sys.stderr)
    return code


def _check_output(path: str | None, suffix: str) -> str | None:
    """A reason the output cannot be written, or None."""
    if path is None:
        return None
    out = Path(path)
    if out.suffix.lower() != suffix:
        return f"{out.name} should end in {suffix}"
    if out.is_dir():
        return f"{out} is a folder"
    if not out.parent.is_dir():
        return f"the folder {out.parent} does not exist"
    return None


def run(args: argparse.Namespace) -> int:
    from xrayviewer.paths import DEFAULT_MODEL_DIR, LUNG_MODEL_DIR

    if not args.pdf and not args.png:
        return _fail(2, "say where to write the report: --pdf OUT.pdf and/or --png OUT.png")
    for path, suffix in ((args.pdf, ".pdf"), (args.png, ".png")):
        problem = _check_output(path, suffix)
        if problem:
            return _fail(2, f"cannot write the report: {problem}")
    model_dir = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    if not args.model and not (model_dir / "model.json").is_file():
        return _fail(2, f"the default model is missing ({model_dir}). Build it with "
                        "`python training/train_default.py`, or choose a model with --model DIR.")

    # read the image before the slow model load: a typo in the path should not cost a TensorFlow start
    from xrayviewer.imaging import RadiographError, read_radiograph

    try:
        radiograph = read_radiograph(args.image)
    except RadiographError as err:
        return _fail(1, f"{args.image}: {err}")

    # validate the bundle and the class before TensorFlow starts: both are read from model.json
    from xrayviewer.model.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(model_dir)
    except BundleError as err:
        return _fail(2, str(err))
    class_index = None
    if args.class_name is not None:
        if args.class_name not in bundle.classes:
            return _fail(2, f"the model has no class {args.class_name!r} (its classes: {', '.join(bundle.classes)})")
        class_index = bundle.classes.index(args.class_name)

    from xrayviewer.model.classifier import Classifier

    try:
        classifier = Classifier.load(bundle)
    except BundleError as err:
        return _fail(2, str(err))

    from xrayviewer.reports.runs import load_lungs_if_available

    lungs = None
    want_lungs = args.lungs if args.lungs is not None else (LUNG_MODEL_DIR / "model.json").is_file()
    if want_lungs:
        lungs, why = load_lungs_if_available(LUNG_MODEL_DIR)
        if lungs is None:
            if args.lungs:
                return _fail(2, f"the lung model cannot be used: {why}")
            print(f"note: no lung attention in the report, the lung model cannot be used: {why}", file=sys.stderr)

    from xrayviewer.reports.case_report import case_report_for_file

    try:
        written = case_report_for_file(args.image, classifier, out_pdf=args.pdf, out_png=args.png, lungs=lungs,
                                       class_index=class_index, radiograph=radiograph)
    except OSError as err:
        return _fail(1, f"cannot write the report: {err.strerror or err}")
    for path in written:
        print(path)
    return 0
