"""Regenerates the README's example case report (case-report.png) with the shipped model, through the command line.

    .venv/bin/python docs/screenshots/make_case_report_screenshot.py

Which image: the first NIH pneumonia radiograph (manifest.csv: source "nih", label "pneumonia", in manifest order)
that is in the shipped model's validation split — its SHA-256 is one of models/default/model.json's
training.split.validation.sha256, so the model never trained on it — and that the model classifies as pneumonia.
With the shipped 336 x 336 model (version 2) that is pneumonia/nih_00004118_002.png (pneumonia 81 %): the first
of the 8 such validation images, nih_00000573_008.png, is classified as covid.

What it does, all with the CLI (`python -m xrayviewer`, the same code a person runs):
- `predict` on those validation images (no lung model: only the predicted class is needed) picks the image;
- `report IMAGE --model models/default --pdf … --png …` writes the one-page report (PNG at 150 dpi, 1240 x 1754);
- the PNG is scaled down (Lanczos) to A4 at 100 dpi, 827 x 1169, the size the README shows, as case-report.png.

Options: --data DIR (default: the shared data found by xrayviewer.paths), --out DIR (default: this folder).
The image is read where it is (nothing is copied); the CLI's outputs go to a temporary folder that is deleted at
the end. Nothing is written into the repository except the PNG.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE, LABEL = "nih", "pneumonia"
README_SIZE = (827, 1169)        # A4 portrait at 100 dpi


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validation_candidates(cxr: Path, model_dir: Path) -> list[Path]:
    """SOURCE images labelled LABEL, in manifest order, whose file content is in the model's validation split."""
    split = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))["training"]["split"]
    validation = set(split["validation"]["sha256"])
    with open(cxr / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if row["source"] == SOURCE and row["label"] == LABEL]
    return [cxr / row["path"] for row in rows if sha256(cxr / row["path"]) in validation]


def xrayviewer(*args: str) -> None:
    """`python -m xrayviewer ARGS` with this interpreter; its messages go to our stderr, a failure stops the script."""
    subprocess.run([sys.executable, "-m", "xrayviewer", *args], check=True, stdout=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="the cxr folder (default: ../shared/data/cxr)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()

    from PIL import Image

    from xrayviewer.paths import DEFAULT_MODEL_DIR, shared_data_dir
    from xrayviewer.results import read_results_csv

    cxr = args.data or (shared_data_dir() / "cxr" if shared_data_dir() else None)
    if cxr is None or not (cxr / "manifest.csv").is_file():
        print("no shared data: pass --data DIR (a folder with manifest.csv)", file=sys.stderr)
        return 2
    candidates = validation_candidates(cxr, DEFAULT_MODEL_DIR)
    if not candidates:
        print(f"no {SOURCE} {LABEL} image of {cxr} is in the validation split of {DEFAULT_MODEL_DIR}", file=sys.stderr)
        return 1
    box = Path(tempfile.mkdtemp(prefix="xrayviewer-report-shot-"))
    try:
        xrayviewer("predict", *map(str, candidates), "--model", str(DEFAULT_MODEL_DIR), "--no-lungs", "--quiet",
                   "--csv", str(box / "predictions.csv"))
        _classes, rows = read_results_csv(box / "predictions.csv")
        predicted = {Path(row.path).name: row.predicted for row in rows}
        for path in candidates:
            print(f"{path.relative_to(cxr)}: predicted {predicted.get(path.name) or 'nothing'}")
        image = next((path for path in candidates if predicted.get(path.name) == LABEL), None)
        if image is None:
            print(f"the model classifies none of the {len(candidates)} validation images as {LABEL}", file=sys.stderr)
            return 1

        xrayviewer("report", str(image), "--model", str(DEFAULT_MODEL_DIR), "--pdf", str(box / "report.pdf"),
                   "--png", str(box / "report.png"))
        args.out.mkdir(parents=True, exist_ok=True)
        with Image.open(box / "report.png") as page:
            page.convert("RGB").resize(README_SIZE, Image.Resampling.LANCZOS).save(args.out / "case-report.png")
        print(f"saved {args.out / 'case-report.png'}: {image.relative_to(cxr)}")
        return 0
    finally:
        shutil.rmtree(box, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
