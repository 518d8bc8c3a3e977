"""`xrayviewer predict`: CSV columns and order, error rows for bad files, exit codes 0/1/2, heatmap overlays, folders.

Runs in-process through the real dispatcher (xrayviewer.cli.main) with a small head-only bundle on the default base
at 64x64; one subprocess run checks that stdout holds nothing but the CSV.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from xrayviewer.cli import main as cli_main
from xrayviewer.results import csv_columns

CLASSES = ["covid", "normal", "pneumonia"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import keras

    from xrayviewer.model.architecture import build_classifier
    from xrayviewer.model.bundle import save_bundle

    keras.utils.set_random_seed(5)
    model = build_classifier("vgg16-hed-block4", len(CLASSES), None, (64, 64))
    return save_bundle(tmp_path_factory.mktemp("models") / "small", {"classes": CLASSES}, model)


def synthetic_png(path: Path, seed: int, shape=(120, 100)) -> Path:
    rng = np.random.default_rng(seed)
    img = (rng.random(shape) * 120 + 60).astype(np.uint8)
    cv2.ellipse(img, (shape[1] // 3, shape[0] // 2), (shape[1] // 8, shape[0] // 3), 0, 0, 360, 30, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, img)
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    good = [synthetic_png(root / "a.png", 1), synthetic_png(root / "b.jpg", 2, (90, 140))]
    text = root / "notes.png"
    text.write_text("this is not an image\n")
    empty = root / "empty.jpg"
    empty.write_bytes(b"")
    truncated = root / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:200])
    return {"good0": good[0], "good1": good[1], "text": text, "empty": empty, "truncated": truncated,
            "missing": root / "gone.png"}


def run_predict(capsys, *args) -> tuple[int, list[list[str]], str]:
    code = cli_main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(out))) if out else []
    return code, rows, err


def test_all_good_exit_0_and_csv_columns(model_dir, inputs, capsys):
    code, rows, err = run_predict(capsys, "--model", model_dir, inputs["good0"], inputs["good1"])
    assert code == 0, err
    assert rows[0] == csv_columns(CLASSES)
    assert [r[0] for r in rows[1:]] == [str(inputs["good0"]), str(inputs["good1"])]
    header = rows[0]
    for row in rows[1:]:
        record = dict(zip(header, row))
        probs = [float(record[f"p_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert record["predicted"] == CLASSES[int(np.argmax(probs))] and record["error"] == ""
    assert "2 files: 2 classified, 0 could not be read" in err and "Traceback" not in err


def test_bad_files_give_error_rows_and_exit_1(model_dir, inputs, capsys):
    order = ["text", "good0", "empty", "missing", "truncated", "good1"]
    code, rows, err = run_predict(capsys, "--model", model_dir, "--batch-size", "1", *[inputs[k] for k in order])
    assert code == 1
    records = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert [r["path"] for r in records] == [str(inputs[k]) for k in order]   # input order kept
    for key, record in zip(order, records):
        if key.startswith("good"):
            assert record["error"] == "" and record["predicted"] in CLASSES
        else:
            assert record["error"] and record["predicted"] == "" and record["p_covid"] == ""
            assert "Traceback" not in record["error"] and "\n" not in record["error"]
    assert "6 files: 2 classified, 4 could not be read" in err


def test_csv_to_file_and_nothing_else_on_stdout(model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "results.csv"
    code, rows, _err = run_predict(capsys, "--model", model_dir, "--csv", out, inputs["good0"], inputs["text"])
    assert code == 1 and rows == []
    from xrayviewer.results import read_results_csv

    classes, results = read_results_csv(out)
    assert classes == CLASSES and [bool(r.error) for r in results] == [False, True]


def test_heatmap_overlays_at_original_size(model_dir, inputs, tmp_path, capsys):
    heat_dir = tmp_path / "heat"
    code, rows, _ = run_predict(capsys, "--model", model_dir, "--heatmaps", heat_dir, inputs["good0"],
                                inputs["good1"], inputs["text"])
    assert code == 1
    written = sorted(heat_dir.glob("*.png"))
    assert len(written) == 2
    for path, source in zip(written, (inputs["good0"], inputs["good1"])):
        assert path.name.startswith(source.stem + "_")
        overlay = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert overlay.shape == cv2.imread(str(source), cv2.IMREAD_GRAYSCALE).shape + (3,)
        assert np.ptp(overlay[..., 2].astype(int) - overlay[..., 0].astype(int)) > 20   # coloured, not gray


def test_folders_plain_and_recursive(model_dir, tmp_path, capsys):
    synthetic_png(tmp_path / "top" / "x1.png", 3)
    synthetic_png(tmp_path / "top" / "x2.png", 4)
    synthetic_png(tmp_path / "top" / "sub" / "y.png", 5)
    code, rows, _ = run_predict(capsys, "--model", model_dir, tmp_path / "top")
    assert code == 0 and sorted(Path(r[0]).name for r in rows[1:]) == ["x1.png", "x2.png"]
    code, rows, _ = run_predict(capsys, "--model", model_dir, "--recursive", tmp_path / "top")
    assert code == 0 and sorted(Path(r[0]).name for r in rows[1:]) == ["x1.png", "x2.png", "y.png"]


def test_ground_truth_and_correct_from_class_folders(model_dir, tmp_path, capsys):
    synthetic_png(tmp_path / "data" / "covid" / "c1.png", 6)
    synthetic_png(tmp_path / "data" / "Normal" / "n1.png", 7)       # folder names match classes case-insensitively
    synthetic_png(tmp_path / "data" / "misc" / "m1.png", 8)         # a folder that names no class: no ground truth
    code, rows, err = run_predict(capsys, "--model", model_dir, "--recursive", tmp_path / "data")
    assert code == 0, err
    records = {Path(r["path"]).name: r for r in (dict(zip(rows[0], row)) for row in rows[1:])}
    assert {name: r["ground_truth"] for name, r in records.items()} == {"c1.png": "covid", "n1.png": "normal",
                                                                        "m1.png": ""}
    for r in records.values():
        expected = "" if not r["ground_truth"] else str(r["predicted"] == r["ground_truth"]).lower()
        assert r["correct"] == expected


@pytest.mark.parametrize("case", ["missing model", "broken model", "csv folder missing", "empty folder",
                                  "bad batch size"])
def test_usage_errors_exit_2(model_dir, inputs, tmp_path, capsys, case):
    args = {"missing model": ["--model", tmp_path / "nope", inputs["good0"]],
            "broken model": ["--model", tmp_path, inputs["good0"]],
            "csv folder missing": ["--model", model_dir, "--csv", tmp_path / "no" / "out.csv", inputs["good0"]],
            "empty folder": ["--model", model_dir, tmp_path],
            "bad batch size": ["--model", model_dir, "--batch-size", "0", inputs["good0"]]}[case]
    code, _rows, err = run_predict(capsys, *args)
    assert code == 2, err
    assert "error:" in err and "Traceback" not in err


def test_default_model_missing_is_explained(inputs, tmp_path, capsys, monkeypatch):
    import xrayviewer.paths

    monkeypatch.setattr(xrayviewer.paths, "DEFAULT_MODEL_DIR", tmp_path / "default")
    code, _rows, err = run_predict(capsys, inputs["good0"])
    assert code == 2 and "default model is missing" in err and "--model" in err


def test_no_paths_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["predict"])
    assert info.value.code == 2


def test_lungs_requested_without_lung_model_exit_2(model_dir, inputs, tmp_path, capsys, monkeypatch):
    import xrayviewer.paths

    monkeypatch.setattr(xrayviewer.paths, "LUNG_MODEL_DIR", tmp_path / "no-lungs")
    code, _rows, err = run_predict(capsys, "--model", model_dir, "--lungs", inputs["good0"])
    assert code == 2 and "lung model" in err


@pytest.mark.shared
def test_real_files_with_a_damaged_twin(model_dir, cxr_manifest, shared_data, tmp_path, capsys):
    by_format = {}
    for row in sorted(cxr_manifest, key=lambda r: r["path"]):
        by_format.setdefault((row["format"], row["mode"]), row)
    # every format/colour mode once (the DICOM, palette JSRT, RGB/RGBA figures, ...), DICOM first
    picks = sorted((shared_data / "cxr" / r["path"] for r in by_format.values()), key=lambda p: p.suffix != ".dcm")
    jpeg = next(shared_data / "cxr" / r["path"] for r in by_format.values() if r["format"] == "JPEG")
    broken = tmp_path / "cut.jpg"
    broken.write_bytes(jpeg.read_bytes()[:1000])
    code, rows, err = run_predict(capsys, "--model", model_dir, *picks, broken)
    assert code == 1, err
    records = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert [r["error"] == "" for r in records] == [True] * len(picks) + [False]
    assert any(p.suffix == ".dcm" for p in picks)


def test_subprocess_stdout_is_only_csv(model_dir, inputs):
    proc = subprocess.run([sys.executable, "-m", "xrayviewer", "predict", "--model", str(model_dir),
                           str(inputs["good0"]), str(inputs["empty"])], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert rows[0] == csv_columns(CLASSES) and len(rows) == 3
    assert "Traceback" not in proc.stderr
