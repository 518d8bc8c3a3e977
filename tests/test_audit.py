"""Shortcut audit: a tiny synthetic dataset + tiny synthetic classifier bundle (always), and the shipped model on a
few real images per class (../shared)."""

from __future__ import annotations

import csv
import json
import threading

import cv2
import numpy as np
import pytest

from xrayviewer.cli import main as cli_main
from xrayviewer.model.audit import CONDITIONS, run_audit
from xrayviewer.model.lungs import LungSegmenter
from xrayviewer.paths import DEFAULT_MODEL_DIR

FIGURES = ("lung_attention.png", "mean_heatmaps.png", "masking.png")


def phantom(rng, marker: bool) -> np.ndarray:
    """A chest-like phantom; class "b" carries a bright corner marker (a shortcut a model can read)."""
    rows, cols = int(rng.integers(180, 240)), int(rng.integers(160, 220))
    img = np.full((rows, cols), 25, np.uint8)
    cv2.ellipse(img, (cols // 2, rows // 2), (int(cols * 0.45), int(rows * 0.47)), 0, 0, 360, 190, -1)
    for side in (-1, 1):
        cv2.ellipse(img, (cols // 2 + side * int(cols * 0.2), int(rows * 0.45)), (int(cols * 0.13), int(rows * 0.3)),
                    0, 0, 360, 70, -1)
    if marker:
        cv2.rectangle(img, (4, 4), (34, 24), 255, -1)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 2) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def segmenter():
    return LungSegmenter.load()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(dataset root, classifier): 2 classes x 6 images from 2 sources, and a small-cnn bundle with random weights."""
    from xrayviewer.model.architecture import build_classifier
    from xrayviewer.model.bundle import save_bundle
    from xrayviewer.model.classifier import Classifier

    root = tmp_path_factory.mktemp("audit-data")
    rng = np.random.default_rng(0)
    rows = []
    for label in ("a", "b"):
        (root / label).mkdir()
        for i in range(6):
            name = f"{label}/img{i}.png"
            cv2.imwrite(str(root / name), phantom(rng, marker=label == "b"))
            rows.append({"path": name, "label": label, "patient_id": f"{label}{i}", "source": f"site{i % 2}"})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)

    model = build_classifier("small-cnn", 2, {"units": 8, "dropout": 0.0}, (64, 64))
    bundle = save_bundle(tmp_path_factory.mktemp("models") / "tiny",
                         {"name": "tiny", "classes": ["a", "b"], "base": {"id": "small-cnn"}}, model, head_only=False)
    return root, Classifier.load(bundle), bundle


def test_audit_on_synthetic_data_writes_every_file_with_sane_numbers(synthetic, segmenter, tmp_path):
    root, classifier, _bundle = synthetic
    events = []
    summary = run_audit(root, classifier, segmenter, tmp_path / "report", progress=events.append)
    out = tmp_path / "report"
    for name in FIGURES + ("by_source.png", "summary.json", "summary.md"):
        assert (out / name).stat().st_size > 100, name
        if name.endswith(".png"):
            assert cv2.imread(str(out / name)) is not None
    assert summary["images"] == 12 and not summary["cancelled"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["images"] == 12 and set(on_disk["by_source"]) == {"site0", "site1"}
    att = summary["lung_attention"]
    assert 0.0 <= att["mean"] <= 1.0 and 0.0 <= att["share_below_50"] <= 1.0
    assert sum(att["histogram"]["counts"]) == att["n"] <= 12
    for cond in CONDITIONS:
        perf = summary["performance"][cond]
        assert perf["n"] == 12 and 0.0 <= perf["accuracy"] <= 1.0
        assert perf["macro_auc"] is None or 0.0 <= perf["macro_auc"] <= 1.0
    assert summary["majority_class_rate"] == pytest.approx(0.5)
    assert any(e["kind"] == "image" for e in events) and events[-1]["kind"] == "done"
    md = (out / "summary.md").read_text()
    assert "lungs blacked out" in md and "site0" in md


def test_audit_limit_and_cancel(synthetic, segmenter, tmp_path):
    root, classifier, _bundle = synthetic
    limited = run_audit(root, classifier, segmenter, tmp_path / "limited", limit=2)
    assert limited["images"] == 4 and limited["limit_per_class"] == 2
    subset = run_audit(root, classifier, segmenter, tmp_path / "subset", only=["a/img0.png", "b/img1.png"])
    assert subset["images"] == 2 and subset["subset"] == "2 listed files"
    with pytest.raises(ValueError, match="none of the"):
        run_audit(root, classifier, segmenter, tmp_path / "none", only=["c/x.png"])
    cancel = threading.Event()

    def stop_after_three(event):
        if event["kind"] == "image" and event["done"] == 3:
            cancel.set()

    cancelled = run_audit(root, classifier, segmenter, tmp_path / "cancelled", progress=stop_after_three,
                          cancel=cancel)
    assert cancelled["cancelled"] and 1 <= cancelled["images"] <= 4   # stops after the image in progress
    assert (tmp_path / "cancelled" / "summary.md").read_text().count("cancelled")


def test_audit_cli(synthetic, tmp_path, capsys):
    root, _classifier, bundle = synthetic
    out = tmp_path / "cli-report"
    assert cli_main(["audit", str(root), "--model", str(bundle), "--out", str(out), "--limit", "3", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "Shortcut audit" in printed and (out / "summary.json").is_file()
    assert cli_main(["audit", str(tmp_path / "nowhere"), "--model", str(bundle)]) == 2
    assert cli_main(["audit", str(root), "--model", str(bundle), "--validation-only"]) == 2
    assert "validation" in capsys.readouterr().err
    assert cli_main(["audit", str(root), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "model.json" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["audit", str(empty), "--model", str(bundle), "--out", str(tmp_path / "x")]) == 1
    assert "nothing to audit" in capsys.readouterr().err


@pytest.mark.shared
@pytest.mark.slow
def test_audit_of_the_shipped_model_on_real_images(shared_data, segmenter, tmp_path, artifacts_dir):
    from xrayviewer.model.classifier import Classifier

    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        pytest.skip("models/default is not there yet")
    classifier = Classifier.load(DEFAULT_MODEL_DIR)
    out = artifacts_dir / "audit-real"
    summary = run_audit(shared_data / "cxr", classifier, segmenter, out, limit=3)
    assert summary["images"] >= 9 and not summary["failed"]
    assert summary["lung_attention"]["n"] == summary["images"]
    assert 0.2 <= summary["lung_attention"]["mean"] <= 1.0
    assert summary["by_source"] and (out / "by_source.png").is_file()
    as_is = summary["performance"]["as_is"]
    assert as_is["n"] >= 9 and as_is["accuracy"] >= 0.4
