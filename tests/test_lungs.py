"""Lung segmenter (models/lungs), lung attention, outlines and the `lungs` CLI: real lungs plus synthetic twins."""

from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from xrayviewer.cli import main as cli_main
from xrayviewer.imaging import read_radiograph
from xrayviewer.imaging.radiograph import Radiograph
from xrayviewer.model.bundle import BundleError
from xrayviewer.model.lungs import (LungModelError, LungSegmenter, clean_mask, dice, fill_holes, lung_attention,
                                    outline)
from xrayviewer.paths import LUNG_MODEL_DIR


@pytest.fixture(scope="module")
def segmenter() -> LungSegmenter:
    return LungSegmenter.load()


def synthetic_chest(rows: int = 300, cols: int = 260) -> Radiograph:
    """A bright body with two dark lung-shaped ellipses (a phantom, not a radiograph)."""
    img = np.full((rows, cols), 0.1, np.float32)
    cv2.ellipse(img, (cols // 2, rows // 2), (int(cols * 0.45), int(rows * 0.47)), 0, 0, 360, 0.75, -1)
    for side in (-1, 1):
        cv2.ellipse(img, (cols // 2 + side * int(cols * 0.2), int(rows * 0.45)), (int(cols * 0.13), int(rows * 0.3)),
                    0, 0, 360, 0.25, -1)
    return Radiograph.from_array(cv2.GaussianBlur(img, (0, 0), 3))


# ------------------------------------------------------------------------------------------------ pure helpers
def test_lung_attention_is_the_share_of_positive_mass_inside_the_mask():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    heat = np.zeros((10, 10), np.float32)
    heat[:, :5] = 1.0
    heat[:, 5:] = 3.0
    assert lung_attention(heat, mask) == pytest.approx(0.25)
    heat[:, 5:] = -7.0  # negative evidence is not attention
    assert lung_attention(heat, mask) == pytest.approx(1.0)
    assert np.isnan(lung_attention(np.zeros((10, 10)), mask))
    # a conv-grid heatmap is resized to the mask
    grid = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    assert lung_attention(grid, mask) == pytest.approx(1.0, abs=0.15)
    with pytest.raises(ValueError):
        lung_attention(np.zeros(5), mask)


def test_clean_mask_keeps_two_largest_components_and_fills_holes():
    mask = np.zeros((100, 100), bool)
    mask[10:80, 10:40] = True
    mask[10:80, 60:90] = True
    mask[30:40, 20:30] = False           # a device-shaped hole
    mask[90:95, 45:50] = True            # a third, smaller blob
    mask[2, 2] = True                    # a speck
    cleaned = clean_mask(mask)
    assert cleaned[35, 25] and not cleaned[92, 47] and not cleaned[2, 2]
    assert cleaned.sum() == 2 * 70 * 30
    assert not clean_mask(np.zeros((5, 5), bool)).any()
    ring = np.zeros((20, 20), bool)
    ring[5:15, 5:15] = True
    ring[8:12, 8:12] = False
    assert fill_holes(ring)[10, 10]


def test_outline_gives_closed_xy_contours():
    mask = np.zeros((50, 80), bool)
    mask[10:40, 5:30] = True
    mask[10:40, 50:75] = True
    contours = outline(mask)
    assert len(contours) == 2
    for c in contours:
        assert c.ndim == 2 and c.shape[1] == 2 and c.dtype == np.int32
        assert c[:, 0].max() < 80 and c[:, 1].max() < 50   # (x, y) order
    assert outline(np.zeros((5, 5), bool)) == []


def test_dice():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0 and dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


# ------------------------------------------------------------------------------------------------ bundle
def test_shipped_bundle_is_small_and_documented():
    meta = json.loads((LUNG_MODEL_DIR / "model.json").read_text())
    assert meta["kind"] == "lung-segmenter"
    weights = LUNG_MODEL_DIR / meta["weights"]["file"]
    assert weights.suffix == ".h5" and weights.name.endswith(".weights.h5")
    assert weights.stat().st_size < 12e6
    card = (LUNG_MODEL_DIR / "MODEL_CARD.md").read_text()
    assert "Dice" in card and "licence" in card.lower()
    assert meta["metrics"]["validation_dice_mean"] >= 0.85


@pytest.mark.parametrize("damage", ["missing", "not-json", "wrong-kind", "bad-hash", "no-weights"])
def test_bad_lung_bundle_is_refused_with_a_clear_message(tmp_path, damage):
    folder = tmp_path / "lungs"
    shutil.copytree(LUNG_MODEL_DIR, folder)
    meta_path = folder / "model.json"
    meta = json.loads(meta_path.read_text())
    if damage == "missing":
        folder = tmp_path / "nowhere"
    elif damage == "not-json":
        meta_path.write_text("{oops")
    elif damage == "wrong-kind":
        meta["kind"] = "classifier"
        meta_path.write_text(json.dumps(meta))
    elif damage == "bad-hash":
        with open(folder / meta["weights"]["file"], "ab") as f:
            f.write(b"tampered")
    elif damage == "no-weights":
        (folder / meta["weights"]["file"]).unlink()
    with pytest.raises(LungModelError) as info:
        LungSegmenter.load(folder)
    assert str(folder) in str(info.value) or "lung" in str(info.value)
    assert isinstance(info.value, BundleError)  # callers that catch BundleError catch this too


# ------------------------------------------------------------------------------------------------ synthetic twins
def test_segment_synthetic_image_gives_bool_mask_at_original_size(segmenter):
    radiograph = synthetic_chest(301, 257)
    mask = segmenter.segment(radiograph)
    assert mask.dtype == bool and mask.shape == (301, 257)
    assert segmenter.segment(radiograph.pixels).shape == (301, 257)   # plain arrays too
    blank = segmenter.segment(Radiograph.from_array(np.zeros((64, 90), np.float32)))
    assert blank.shape == (64, 90)


def test_segment_from_several_threads_gives_the_same_masks(segmenter):
    """Workers share one segmenter: the lock keeps concurrent calls apart."""
    from concurrent.futures import ThreadPoolExecutor

    images = [synthetic_chest(200 + 10 * i, 180 + 7 * i) for i in range(4)]
    alone = [segmenter.segment(r) for r in images]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(segmenter.segment, images * 2))
    for i, mask in enumerate(together):
        np.testing.assert_array_equal(mask, alone[i % 4])


def test_lungs_cli_writes_0_255_png_of_the_original_size(tmp_path, capsys):
    image = tmp_path / "phantom.png"
    cv2.imwrite(str(image), (synthetic_chest(310, 270).pixels * 255).astype(np.uint8))
    out = tmp_path / "mask.png"
    assert cli_main(["lungs", str(image), "--out", str(out)]) == 0
    mask = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (310, 270) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert "mask" in capsys.readouterr().out


def test_lungs_cli_bad_inputs_give_clear_messages_and_exit_codes(tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    assert cli_main(["lungs", str(text), "--out", str(tmp_path / "m.png")]) == 1
    err = capsys.readouterr().err
    assert "not an image" in err and "Traceback" not in err
    assert not (tmp_path / "m.png").exists()

    assert cli_main(["lungs", str(tmp_path / "missing.png"), "--out", str(tmp_path / "m.png")]) == 1
    assert "missing.png" in capsys.readouterr().err

    image = tmp_path / "phantom.png"
    cv2.imwrite(str(image), (synthetic_chest().pixels * 255).astype(np.uint8))
    assert cli_main(["lungs", str(image), "--out", str(tmp_path / "m.jpg")]) == 2
    assert cli_main(["lungs", str(image), "--out", str(tmp_path / "m.png"), "--model", str(tmp_path)]) == 2
    assert "model.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:   # --out is required: argparse usage error
        cli_main(["lungs", str(image)])
    assert info.value.code == 2


# ------------------------------------------------------------------------------------------------ real data
@pytest.mark.shared
def test_dice_on_validation_patients(shared_data, segmenter, artifacts_dir):
    """Patients the segmenter never saw in training; the bundle's model card has the figure on all of them."""
    meta = json.loads((LUNG_MODEL_DIR / "model.json").read_text())
    val_names = set(meta["training"]["val_names"])
    with open(shared_data / "lungs" / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["name"] in val_names]
    rng = np.random.default_rng(0)
    picked = [rows[i] for i in rng.choice(len(rows), 6, replace=False)]
    picked += [r for r in rows if r["source"] == "jsrt"][:1]
    scores = []
    for r in picked:
        radiograph = read_radiograph(shared_data / "lungs" / "images" / f"{r['name']}.png")
        reference = cv2.imread(str(shared_data / "lungs" / "masks" / f"{r['name']}.png"), cv2.IMREAD_GRAYSCALE) > 127
        mask = segmenter.segment(radiograph)
        assert mask.shape == reference.shape == radiograph.shape
        scores.append(dice(mask, reference))
    assert np.mean(scores) >= 0.85, scores
    assert min(scores) >= 0.6, scores
    overlay = cv2.cvtColor((radiograph.pixels * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    cv2.drawContours(overlay, [c.reshape(-1, 1, 2) for c in outline(mask)], -1, (0, 255, 0), 2)
    cv2.imwrite(str(artifacts_dir / "lungs_outline.png"), overlay)


@pytest.mark.shared
def test_lungs_cli_on_real_radiographs_keeps_the_original_size(shared_data, cxr_manifest, tmp_path):
    """A palette JSRT PNG at 2048 px and the one DICOM: the mask matches the stored size."""
    picks = [next(r for r in cxr_manifest if r["source"].startswith("jsrt")),
             next(r for r in cxr_manifest if r["path"].endswith(".dcm"))]
    for r in picks:
        out = tmp_path / f"{r['source']}.png"
        assert cli_main(["lungs", str(shared_data / "cxr" / r["path"]), "--out", str(out)]) == 0
        mask = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
        assert mask.shape == read_radiograph(shared_data / "cxr" / r["path"]).shape
        assert set(np.unique(mask)) <= {0, 255}
        assert 0.1 < (mask > 0).mean() < 0.6   # two lungs, not nothing and not everything
