"""Pure exports without Qt or TensorFlow: run summaries, ground truth, heatmap PNGs and the one-page case report."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from xrayviewer import DISCLAIMER
from xrayviewer.imaging.radiograph import Radiograph
from xrayviewer.reports.case_report import CaseFindings, ModelInfo, build_case_report, file_metadata_lines
from xrayviewer.reports.ground_truth import ground_truth_labels
from xrayviewer.reports.heatmap_export import (export_heatmap, raw_map_path, read_heatmap_png16, write_heatmap_png16,
                                               write_rgb_png)
from xrayviewer.reports.summary import summarize_results
from xrayviewer.results import ResultRow

CLASSES = ["covid", "normal", "pneumonia"]


def _row(truth, predicted, error=""):
    return ResultRow(path=f"/x/{truth}/{predicted}.png", probabilities={c: float(c == predicted) for c in CLASSES},
                     predicted="" if error else predicted, ground_truth=truth, error=error)


# ---------------------------------------------------------------- summary

def test_summary_accuracy_confusion_sensitivity_specificity():
    rows = ([_row("covid", "covid")] * 3 + [_row("covid", "normal")] + [_row("normal", "normal")] * 4
            + [_row("pneumonia", "covid")] * 2 + [_row("other", "normal")] + [_row("normal", "", error="truncated")]
            + [_row("", "covid")])
    s = summarize_results(rows, CLASSES)
    assert (s.n_rows, s.n_errors, s.n_scored, s.n_correct) == (13, 1, 11, 7)
    assert s.accuracy == pytest.approx(7 / 11)
    assert s.labels == CLASSES + ["other"]  # a truth the model does not know gets its own row, always wrong
    assert s.confusion.tolist() == [[3, 1, 0, 0], [0, 4, 0, 0], [2, 0, 0, 0], [0, 1, 0, 0]]
    by = {c.label: c for c in s.per_class}
    assert by["covid"].sensitivity == pytest.approx(3 / 4) and by["covid"].specificity == pytest.approx(5 / 7)
    assert by["normal"].sensitivity == 1.0 and by["normal"].specificity == pytest.approx(5 / 7)
    assert by["pneumonia"].sensitivity == 0.0 and by["pneumonia"].specificity == 1.0
    assert by["pneumonia"].support == 2


def test_summary_without_ground_truth():
    s = summarize_results([_row("", "covid"), _row("", "normal")], CLASSES)
    assert not s.has_ground_truth and s.accuracy is None
    assert all(c.sensitivity is None for c in s.per_class)


# ---------------------------------------------------------------- ground truth

def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_ground_truth_from_folder_names_case_insensitive(tmp_path):
    a = _touch(tmp_path / "COVID" / "a.png")
    b = _touch(tmp_path / "Normal" / "b.png")
    c = _touch(tmp_path / "unsorted" / "c.png")
    labels = ground_truth_labels([a, b, c], CLASSES)
    assert labels == {a: "covid", b: "normal"}


def test_ground_truth_manifest_wins_and_is_found_above_a_class_folder(tmp_path):
    a = _touch(tmp_path / "covid" / "a.png")
    b = _touch(tmp_path / "covid" / "b.png")
    (tmp_path / "manifest.csv").write_text("path,label,source\ncovid/a.png,other,x\ncovid/b.png,Pneumonia,y\n")
    assert ground_truth_labels([a, b], CLASSES) == {a: "other", b: "pneumonia"}
    # opened one level down (the class folder itself): the dataset's manifest is still used
    assert ground_truth_labels([b], CLASSES) == {b: "pneumonia"}


def test_ground_truth_ignores_a_manifest_without_label_column(tmp_path):
    a = _touch(tmp_path / "normal" / "a.png")
    (tmp_path / "manifest.csv").write_text("path,comment\nnormal/a.png,hello\n")
    assert ground_truth_labels([a], CLASSES) == {a: "normal"}


# ---------------------------------------------------------------- heatmap PNGs

def test_heatmap_png16_round_trips_within_one_step(tmp_path):
    rng = np.random.default_rng(1)
    heat = rng.random((333, 251)).astype(np.float32)
    heat[0, 0], heat[0, 1] = 0.0, 1.0
    path = write_heatmap_png16(heat, tmp_path / "kärte ünïcode.png")
    back = read_heatmap_png16(path)
    assert back.shape == heat.shape and back.dtype == np.float32
    assert np.max(np.abs(back - heat)) <= 1 / 65535
    assert back[0, 0] == 0.0 and back[0, 1] == 1.0


def test_reading_an_8bit_png_as_heatmap_says_so(tmp_path):
    write_rgb_png(np.zeros((4, 5, 3), np.uint8), tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="16-bit"):
        read_heatmap_png16(tmp_path / "rgb.png")


def test_export_heatmap_writes_overlay_and_raw_map_at_image_size(tmp_path):
    import cv2

    pixels = np.tile(np.linspace(0, 1, 300, dtype=np.float32), (200, 1))
    grid = np.zeros((14, 14), np.float32)
    grid[3:6, 8:11] = 1.0
    overlay_path, raw_path = export_heatmap(pixels, grid, tmp_path / "case.png")
    assert raw_path == raw_map_path(overlay_path) == tmp_path / "case-raw16.png"
    rgb = cv2.imread(str(overlay_path), cv2.IMREAD_UNCHANGED)
    assert rgb.dtype == np.uint8 and rgb.shape == (200, 300, 3)
    raw = read_heatmap_png16(raw_path)
    assert raw.shape == (200, 300)
    assert raw[:40].max() < raw[int(200 * 4.5 / 14), int(300 * 9.5 / 14)]  # the hot spot stays where it was
    # the overlay is warm (red > blue) where the map is hot and gray where it is cold
    b, g, r = rgb[int(200 * 4.5 / 14), int(300 * 9.5 / 14)]
    assert int(r) > int(b)


# ---------------------------------------------------------------- case report

def _pdf_page_count(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))


def _synthetic_case(tmp_path: Path):
    rows, cols = 600, 500
    yy, xx = np.mgrid[0:rows, 0:cols]
    lungs = ((((yy - 300) / 180.0) ** 2 + ((xx - 150) / 80.0) ** 2) < 1) | \
            ((((yy - 300) / 180.0) ** 2 + ((xx - 350) / 80.0) ** 2) < 1)
    pixels = np.where(lungs, 0.25, 0.75).astype(np.float32)
    image_path = tmp_path / "patient 7.png"
    image_path.write_bytes(b"\x89PNG fake bytes for the size line")
    radiograph = Radiograph(pixels, {"format": "PNG", "bit_depth": 8, "photometric": "MONOCHROME2",
                                     "original_shape": (rows, cols), "notes": []}, str(image_path))
    heat = np.exp(-(((yy - 280) / 90.0) ** 2 + ((xx - 160) / 60.0) ** 2)).astype(np.float32)
    findings = CaseFindings(CLASSES, [0.7, 0.1, 0.2], heatmap=heat, lung_attention=0.83, lung_mask=lungs,
                            ood_score=1.4, ood_threshold=3.0)
    card = tmp_path / "bundle" / "MODEL_CARD.md"
    _touch(card)
    info = ModelInfo("default", "1.2", str(card.parent), CLASSES, str(card))
    return radiograph, findings, info


def test_case_report_is_a_valid_one_page_pdf_and_png(tmp_path, artifacts_dir):
    radiograph, findings, info = _synthetic_case(tmp_path)
    when = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc)
    pdf, png = build_case_report(radiograph, findings, info, tmp_path / "case.pdf", tmp_path / "case.png", when=when)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    assert _pdf_page_count(data) == 1
    assert b"/MediaBox [ 0 0 595" in data  # A4 portrait (595 x 842 pt)
    assert _model_card_uri(info) in data    # the card is a clickable link
    import cv2

    page = cv2.imread(str(png))
    assert page.shape[0] > page.shape[1] * 1.35  # portrait
    if shutil.which("pdftoppm"):
        out = artifacts_dir / "case-report-synthetic"
        subprocess.run(["pdftoppm", "-png", "-r", "80", "-singlefile", str(pdf), str(out)], check=True, timeout=60)
        rendered = cv2.imread(str(out) + ".png")
        assert rendered is not None and rendered.shape[0] > rendered.shape[1]
        assert rendered.std() > 20  # not a blank page
    shutil.copy(png, artifacts_dir / "case-report-synthetic-direct.png")


def _model_card_uri(info: ModelInfo) -> bytes:
    return Path(info.card_path).resolve().as_uri().encode()


def test_case_report_text_carries_disclaimer_model_and_file(tmp_path):
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext (poppler-utils) is not installed")
    radiograph, findings, info = _synthetic_case(tmp_path)
    findings.ood_flag = True
    (pdf,) = build_case_report(radiograph, findings, info, out_pdf=tmp_path / "r.pdf")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, timeout=60).stdout
    assert DISCLAIMER.upper() in text
    for needle in ("patient 7.png", "default", "version 1.2", "MODEL_CARD.md", "83.0 %", "70.0 %",
                   "UNLIKE THE TRAINING", "500 × 600 px"):
        assert needle in text, needle


def test_case_report_from_an_analysis_like_object_and_bundle_like_model(tmp_path):
    radiograph, _, _ = _synthetic_case(tmp_path)

    class FakeAnalysis:
        classes = CLASSES
        probabilities = np.array([0.2, 0.5, 0.3], np.float32)
        ood_score = None
        ood_flag = False

        def heatmap(self, class_index=None, shape=None):
            assert class_index == 1 and shape == radiograph.shape
            return np.ones(shape, np.float32) * 0.5

    class FakeBundle:
        name, classes, meta, path = "mini", CLASSES, {"version": "0.3"}, str(tmp_path / "no-card")

    (png,) = build_case_report(radiograph, FakeAnalysis(), FakeBundle(), out_png=tmp_path / "a.png")
    assert png.stat().st_size > 20_000


def test_case_report_needs_an_output(tmp_path):
    radiograph, findings, info = _synthetic_case(tmp_path)
    with pytest.raises(ValueError):
        build_case_report(radiograph, findings, info)


def test_file_metadata_lists_dicom_tags_and_notes():
    r = Radiograph(np.zeros((4, 4), np.float32), {"format": "DICOM", "bit_depth": 12, "original_shape": (2048, 1024),
                                                  "dicom": {"Modality": "DX", "StudyDate": "20200101"},
                                                  "notes": ["MONOCHROME1 inverted"]}, "/nowhere/x.dcm")
    lines = dict(file_metadata_lines(r))
    assert lines["Image size"].startswith("1024 × 2048 px")
    assert "Modality: DX" in lines["DICOM"] and lines["Note"] == "MONOCHROME1 inverted"
