"""`python -m xrayviewer report IMAGE --model DIR --pdf OUT.pdf --png OUT.png`: the case report from the command line,
with a real (small, random-head) model bundle; clear messages and exit codes 0/1/2 for bad input."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

CLASSES = ["covid", "normal", "pneumonia"]


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xrayviewer", "report", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> Path:
    """A real bundle on the small CNN base (no pretrained weights needed, builds in seconds)."""
    import keras

    from xrayviewer.model.architecture import build_classifier
    from xrayviewer.model.bundle import save_bundle

    keras.utils.set_random_seed(3)
    model = build_classifier("small-cnn", len(CLASSES), {"units": 8, "dropout": 0.0}, (96, 96))
    meta = {"name": "small test model", "version": "0.1", "classes": CLASSES, "base": {"id": "small-cnn"}}
    return save_bundle(tmp_path_factory.mktemp("models") / "small", meta, model, head_only=False,
                       extra_files={"MODEL_CARD.md": b"# small test model\nRandom weights, for tests only.\n"})


@pytest.fixture
def image(tmp_path) -> Path:
    rows, cols = 320, 280
    img = np.full((rows, cols), 180, np.uint8)
    cv2.ellipse(img, (90, 160), (45, 110), 0, 0, 360, 60, -1)
    cv2.ellipse(img, (190, 160), (45, 110), 0, 0, 360, 60, -1)
    path = tmp_path / "chest.png"
    cv2.imwrite(str(path), img)
    return path


def test_usage_errors_exit_2_with_a_message(tmp_path, image):
    proc = _cli(str(image), "--model", str(tmp_path))
    assert proc.returncode == 2 and "--pdf OUT.pdf and/or --png OUT.png" in proc.stderr
    proc = _cli(str(image), "--model", str(tmp_path), "--pdf", str(tmp_path / "no-such-dir" / "r.pdf"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = _cli(str(image), "--model", str(tmp_path), "--pdf", str(tmp_path / "r.png"))
    assert proc.returncode == 2 and "should end in .pdf" in proc.stderr
    for p in (proc,):
        assert "Traceback" not in p.stderr


def test_unreadable_image_exits_1_before_loading_a_model(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    proc = _cli(str(bad), "--model", str(tmp_path / "nowhere"), "--pdf", str(tmp_path / "r.pdf"), timeout=120)
    assert proc.returncode == 1
    assert "notes.png" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.pdf").exists()


def test_broken_model_folder_exits_2(tmp_path, image):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model.json").write_text("{ not json")
    proc = _cli(str(image), "--model", str(broken), "--pdf", str(tmp_path / "r.pdf"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.json" in proc.stderr


@pytest.mark.slow
def test_report_writes_one_page_pdf_and_png(tmp_path, image, small_bundle, artifacts_dir):
    pdf, png = tmp_path / "case.pdf", tmp_path / "case.png"
    proc = _cli(str(image), "--model", str(small_bundle), "--pdf", str(pdf), "--png", str(png), "--no-lungs",
                "--class", "normal")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(pdf), str(png)]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data)) == 1
    assert cv2.imread(str(png)).shape[0] > 1500
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
        assert "small test model" in text and "version 0.1" in text and "MODEL_CARD.md" in text
        assert re.search(r"heatmap for “normal\s*”", text) and "chest.png" in text
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-png", "-r", "60", "-singlefile", str(pdf), str(artifacts_dir / "case-report-cli")],
                       check=True, timeout=60)
    proc = _cli(str(image), "--model", str(small_bundle), "--png", str(png), "--no-lungs", "--class", "tumour")
    assert proc.returncode == 2 and "no class 'tumour'" in proc.stderr


# ------------------------------------------------------------------------------------------- real model, in process

@pytest.fixture(scope="module")
def small_classifier(small_bundle):
    from xrayviewer.model.classifier import Classifier

    return Classifier.load(small_bundle)


def test_classify_folder_with_a_real_model_on_real_images(small_classifier, shared_data, cxr_manifest, tmp_path):
    from xrayviewer.reports.runs import classify_folder
    from xrayviewer.reports.summary import summarize_results

    picked = [r for r in cxr_manifest if r["format"] == "DICOM"][:1]
    for label in ("covid", "normal", "pneumonia", "other"):
        picked += [r for r in cxr_manifest if r["label"] == label and r["format"] != "DICOM"][:2]
    paths = []
    for r in picked:
        target = tmp_path / r["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "cxr" / r["path"], target)
        paths.append(target)
    broken = tmp_path / "normal" / "zz_truncated.png"
    broken.write_bytes((shared_data / "cxr" / picked[1]["path"]).read_bytes()[:300])
    paths.append(broken)
    events = []
    rows = classify_folder(small_classifier, paths, progress=events.append)
    assert [r.path for r in rows] == [str(p) for p in paths]
    assert [e["done"] for e in events] == list(range(1, len(paths) + 1))
    assert rows[-1].error and all(not r.error for r in rows[:-1])
    for r in rows[:-1]:
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        folder = Path(r.path).parent.name
        assert r.ground_truth == (folder if folder in CLASSES else "")
    summary = summarize_results(rows, CLASSES)
    assert summary.n_scored == len(paths) - 1 - 2  # the unreadable file and the two "other" images are not scored


def test_case_report_for_the_real_dicom(small_classifier, shared_data, cxr_manifest, tmp_path, artifacts_dir):
    from xrayviewer.reports.case_report import case_report_for_file

    dicom = next(shared_data / "cxr" / r["path"] for r in cxr_manifest if r["format"] == "DICOM")
    pdf, png = case_report_for_file(dicom, small_classifier, out_pdf=tmp_path / "d.pdf",
                                    out_png=artifacts_dir / "case-report-dicom.png")
    assert len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf.read_bytes())) == 1
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
        assert "DICOM" in text and "Modality" in text and "1024 × 1024 px" in text


@pytest.mark.slow
def test_report_with_the_shipped_models_on_a_real_image(tmp_path, shared_data, cxr_manifest, artifacts_dir):
    from xrayviewer.paths import DEFAULT_MODEL_DIR, LUNG_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        pytest.skip("models/default is not built yet (python training/train_default.py)")
    image = shared_data / "cxr" / next(r["path"] for r in cxr_manifest if r["source"] == "nih")
    pdf = tmp_path / "shipped.pdf"
    proc = _cli(str(image), "--pdf", str(pdf), "--png", str(artifacts_dir / "case-report-shipped.png"))
    assert proc.returncode == 0, proc.stderr
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
        assert "MODEL_CARD.md" in text and "Out-of-distribution" in text and "score" in text
        if (LUNG_MODEL_DIR / "model.json").is_file():  # lungs are used by default when shipped
            assert "of the heatmap inside" in text
