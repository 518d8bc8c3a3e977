"""`xrayviewer lungs IMAGE --out MASK.png`: the lung-field mask at the image's original size (0/255 PNG).

Exit 0 when the mask was written, 1 when the image cannot be read or the mask not written, 2 on usage errors
(no --out, a missing or broken lung model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xrayviewer import DISCLAIMER


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=f"{help_text}. {DISCLAIMER}")
    parser.add_argument("image", metavar="IMAGE", help="a chest radiograph (PNG, JPEG, DICOM, ...)")
    parser.add_argument("--out", "-o", metavar="MASK.png", required=True,
                        help="where to write the mask (PNG: 255 = lung, 0 = elsewhere, same size as the image)")
    parser.add_argument("--model", metavar="DIR", help="lung model folder (default: the shipped models/lungs)")
    return parser


def _fail(code: int, message: str) -> int:
    print(f"xrayviewer lungs: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from xrayviewer.imaging import RadiographError, read_radiograph
    from xrayviewer.model.lungs import LungModelError, LungSegmenter
    from xrayviewer.paths import LUNG_MODEL_DIR

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        return _fail(2, f"--out must be a .png file (got {out.name})")
    if not out.parent.is_dir():
        return _fail(2, f"the output folder {out.parent} does not exist")
    try:
        radiograph = read_radiograph(args.image)
    except RadiographError as err:
        return _fail(1, f"{args.image}: {err}")
    try:
        segmenter = LungSegmenter.load(args.model or LUNG_MODEL_DIR)
    except LungModelError as err:
        return _fail(2, str(err))
    mask = segmenter.segment(radiograph)
    ok, encoded = cv2.imencode(".png", np.where(mask, 255, 0).astype(np.uint8))
    try:
        if not ok:
            raise OSError("PNG encoding failed")
        encoded.tofile(str(out))  # tofile: imwrite cannot write non-ASCII paths on some platforms
    except OSError as err:
        return _fail(1, f"cannot write {out}: {err.strerror or err}")
    share = mask.mean()
    print(f"{out}: {mask.shape[1]}x{mask.shape[0]} mask, lungs cover {share:.0%} of the image"
          + ("" if share > 0.05 else " (very little lung found: is this a frontal chest radiograph?)"))
    return 0
