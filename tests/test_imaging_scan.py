"""iter_radiographs (streaming, natural order, skips, DICOM sniffing) and discover_dataset (layout problems,
patient ids, fingerprint)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from badinputs import synthetic_chest, to_u8, write_dicom, write_png_gray
from PIL import Image

from xrayviewer.imaging import FileAccessError, discover_dataset, iter_radiographs
from xrayviewer.imaging import scan
from xrayviewer.imaging.scan import natural_key


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(paths) -> list[str]:
    return [p.name for p in paths]


def tiny_png(path: Path, seed: int) -> Path:
    """A distinct 8x8 PNG per seed (so no two are duplicates by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path)
    return path


def make_dataset(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """root/<label>/<src>_P<patient>_<k>.png, two images per patient."""
    for label, count in sizes.items():
        for k in range(count):
            seed += 1
            tiny_png(root / label / f"src_P{label}{k // 2}_{k % 2}.png", seed)
    return root


def test_a_file_name_prefix_that_is_the_class_is_not_a_source(tmp_path):
    """covid/covid_001.png: a source per class would make the audit warn that 'sources' hold a single class."""
    for label in ("covid", "normal"):
        for k in range(6):
            tiny_png(tmp_path / label / f"{label}_{k:03d}.png", k)
        tiny_png(tmp_path / label / f"nih_0000000{k}_000.png", 10 + k)
    ds = discover_dataset(tmp_path)
    by_name = {i.path.name: i for i in ds.items}
    assert by_name["covid_001.png"].source is None and by_name["normal_001.png"].source is None
    assert by_name["covid_001.png"].patient_id != by_name["normal_001.png"].patient_id
    assert by_name["nih_00000005_000.png"].source == "nih"


def messages(dataset, severity: str) -> str:
    return "\n".join(p.message for p in dataset.problems if p.severity == severity)


# ---------------------------------------------------------------- iter_radiographs

def test_natural_key_orders_numbers_by_value():
    assert sorted(["img10.png", "img2.png", "IMG3.png", "img1.png"], key=natural_key) == [
        "img1.png", "img2.png", "IMG3.png", "img10.png"]


def test_finds_images_in_natural_order_files_before_subfolders(tmp_path):
    for name in ["img10.png", "img2.png", "img1.jpg", "scan.TIFF", "a.bmp", "b.jpeg", "c.dcm", "d.dicom", "e.tif"]:
        touch(tmp_path / name, b"x")
    touch(tmp_path / "sub10" / "z.png", b"x")
    touch(tmp_path / "sub2" / "y.png", b"x")
    found = list(iter_radiographs(tmp_path))
    assert names(found) == ["a.bmp", "b.jpeg", "c.dcm", "d.dicom", "e.tif", "img1.jpg", "img2.png", "img10.png",
                            "scan.TIFF", "y.png", "z.png"]
    assert [p.parent.name for p in found[-2:]] == ["sub2", "sub10"]
    assert names(iter_radiographs(tmp_path, recursive=False))[-1] == "scan.TIFF"


def test_skips_hidden_system_and_non_image_files(tmp_path):
    touch(tmp_path / "keep.png", b"x")
    for name in [".hidden.png", "._keep.png", "Thumbs.db", ".DS_Store", "desktop.ini", "notes.txt", "data.csv",
                 "__MACOSX/keep.png", ".git/x.png", "$RECYCLE.BIN/old.png", "README"]:
        touch(tmp_path / name, b"hello")
    assert names(iter_radiographs(tmp_path)) == ["keep.png"]


def test_dicom_without_extension_is_found_by_its_header(tmp_path):
    chest = to_u8(synthetic_chest(16, 16))
    write_dicom(tmp_path / "IM0001", chest, preamble=False)
    write_dicom(tmp_path / "1.2.840.113619.2.55.3", chest)  # UID-named: '.3' is no extension
    touch(tmp_path / "LICENSE", b"MIT License\n")
    touch(tmp_path / "empty", b"")
    assert names(iter_radiographs(tmp_path)) == ["1.2.840.113619.2.55.3", "IM0001"]


def test_streams_first_path_before_listing_the_rest(tmp_path, monkeypatch):
    """3,000 tiny files in 30 folders: the first path comes after listing 2 folders, not 31."""
    for folder in range(30):
        for k in range(100):
            touch(tmp_path / f"batch{folder}" / f"img{k}.png")
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(scan.os, "scandir", lambda path: listed.append(path) or real_scandir(path))
    walk = iter_radiographs(tmp_path)
    first = next(walk)
    assert first.name == "img0.png" and first.parent.name == "batch0"
    assert len(listed) == 2
    assert sum(1 for _ in walk) == 2999 and len(listed) == 31


def test_extensionless_files_are_sniffed_lazily(tmp_path, monkeypatch):
    bare = write_dicom(tmp_path / "template", to_u8(synthetic_chest(8, 8)), preamble=False).read_bytes()
    (tmp_path / "template").unlink()
    for k in range(3000):
        (tmp_path / f"IM{k}").write_bytes(bare)
    sniffed = []
    real_read_head = scan.read_head
    monkeypatch.setattr(scan, "read_head", lambda path, n: sniffed.append(path) or real_read_head(path, n))
    walk = iter_radiographs(tmp_path)
    assert next(walk).name == "IM0" and len(sniffed) == 1


def test_symlink_loops_do_not_hang(tmp_path):
    touch(tmp_path / "a" / "x.png", b"x")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert names(iter_radiographs(tmp_path)) == ["x.png"]


def test_missing_folder_is_a_file_access_error(tmp_path):
    with pytest.raises(FileAccessError, match="folder not found"):
        list(iter_radiographs(tmp_path / "nope"))
    touch(tmp_path / "file.png", b"x")
    with pytest.raises(FileAccessError, match="not a folder"):
        list(iter_radiographs(tmp_path / "file.png"))


# ---------------------------------------------------------------- discover_dataset

def test_good_dataset(tmp_path):
    ds = discover_dataset(make_dataset(tmp_path, {"normal": 12, "covid": 12, "pneumonia10": 10}))
    assert ds.ok and not ds.problems
    assert ds.classes == ["covid", "normal", "pneumonia10"]
    assert ds.counts() == {"covid": 12, "normal": 12, "pneumonia10": 10}
    assert ds.patient_id_origin == "pattern"
    first = [i for i in ds.items if i.label == "covid"][:2]
    assert first[0].patient_id == first[1].patient_id == "src_Pcovid0" and first[0].source == "src"


def test_fewer_than_two_classes_is_an_error(tmp_path):
    ds = discover_dataset(make_dataset(tmp_path, {"covid": 12}))
    assert not ds.ok and "at least 2" in messages(ds, "error")


def test_small_classes(tmp_path):
    ds = discover_dataset(make_dataset(tmp_path, {"a": 12, "b": 3, "c": 7}))
    assert "class 'b' has only 3" in messages(ds, "error")
    assert "class 'c' has only 7" in messages(ds, "warning")
    assert not ds.ok


def test_imbalance_is_a_warning(tmp_path):
    ds = discover_dataset(make_dataset(tmp_path, {"big": 40, "small": 10}))
    assert ds.ok and "imbalanced" in messages(ds, "warning") and "4.0×" in messages(ds, "warning")


def test_same_file_in_two_classes_is_an_error_listing_both(tmp_path):
    root = make_dataset(tmp_path, {"covid": 6, "normal": 6})
    shutil.copy(root / "covid" / "src_Pcovid0_0.png", root / "normal" / "copied.png")
    ds = discover_dataset(root)
    [problem] = [p for p in ds.problems if p.severity == "error"]
    assert "same image" in problem.message and "covid/src_Pcovid0_0.png" in problem.message
    assert "normal/copied.png" in problem.message
    assert {p.name for p in problem.paths} == {"src_Pcovid0_0.png", "copied.png"}


def test_same_file_twice_in_one_class_is_a_warning(tmp_path):
    root = make_dataset(tmp_path, {"covid": 6, "normal": 6})
    shutil.copy(root / "covid" / "src_Pcovid0_0.png", root / "covid" / "again.png")
    ds = discover_dataset(root)
    assert ds.ok and "appears 2 times in class 'covid'" in messages(ds, "warning")


def test_unreadable_files_are_listed_and_left_out(tmp_path):
    root = make_dataset(tmp_path, {"covid": 6, "normal": 6})
    touch(root / "covid" / "empty.png")
    touch(root / "normal" / "page.jpg", b"<html><body>login</body></html>")
    ds = discover_dataset(root)
    warning = messages(ds, "warning")
    assert "2 unreadable file(s)" in warning and "empty.png" in warning and "page.jpg" in warning
    assert ds.counts() == {"covid": 6, "normal": 6}


def test_verify_decodes_fully(tmp_path):
    root = make_dataset(tmp_path, {"covid": 6, "normal": 6})
    good = write_png_gray(tmp_path / "big.png", synthetic_chest(200, 200)).read_bytes()
    touch(root / "covid" / "cut.png", good[: len(good) // 2])  # header fine, data truncated
    assert "unreadable" not in messages(discover_dataset(root), "warning")
    verified = discover_dataset(root, verify=True)
    assert "cut.png: file is truncated" in messages(verified, "warning")


def test_folders_without_images_and_loose_images(tmp_path):
    root = make_dataset(tmp_path, {"covid": 6, "normal": 6})
    touch(root / "docs" / "readme.txt", b"text")
    tiny_png(root / "stray.png", 999)
    ds = discover_dataset(root)
    assert ds.classes == ["covid", "normal"]
    assert "'docs' has no images: not a class" in messages(ds, "warning")
    assert "1 image(s) directly in the dataset folder" in messages(ds, "warning")


def test_missing_root_is_an_error_not_an_exception(tmp_path):
    ds = discover_dataset(tmp_path / "nowhere")
    assert not ds.ok and "folder not found" in messages(ds, "error")


def test_patient_ids_from_manifest(tmp_path):
    root = make_dataset(tmp_path, {"covid": 6, "normal": 6})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "source", "patient_id"])
        for k, path in enumerate(sorted((root / "covid").glob("*.png"))):
            writer.writerow([f"covid/{path.name}", "covid" if k else "normal", "hospitalA", f"A:{k // 3}"])
    ds = discover_dataset(root)
    assert ds.patient_id_origin == "manifest"
    covid = [i for i in ds.items if i.label == "covid"]
    assert {i.patient_id for i in covid} == {"A:0", "A:1"} and {i.source for i in covid} == {"hospitalA"}
    warning = messages(ds, "warning")
    assert "6 image(s) are not in manifest.csv" in warning and "1 image(s) have another label" in warning


def test_one_patient_per_file_without_a_pattern(tmp_path):
    ds = discover_dataset(make_dataset(tmp_path, {"covid": 6, "normal": 6}), patient_pattern=None)
    assert ds.patient_id_origin == "file" and len({i.patient_id for i in ds.items}) == 12


@pytest.mark.parametrize("name, patient", [
    ("nih_00001281_000.png", "nih_00001281"), ("00001281_000.png", "00001281"),
    ("kermany_person12_virus_3.jpeg", "kermany_person12"), ("person1_bacteria_1.jpeg", "person1"),
    ("IM-0177-0001.jpeg", "IM-0177"), ("NORMAL2-IM-0131-0001.jpeg", "NORMAL2-IM-0131"),
    ("jsrt_JPCNN001.png", "jsrt_JPCNN001"),
])
def test_default_patient_pattern(name, patient):
    import re

    found, _source, origin = scan.patient_id_from_name(Path(name), re.compile(scan.DEFAULT_PATIENT_PATTERN, re.I))
    assert (found, origin) == (patient, "pattern")


def test_fingerprint_follows_content_and_labels_not_paths(tmp_path):
    root = make_dataset(tmp_path / "one", {"covid": 6, "normal": 6})
    before = discover_dataset(root).fingerprint()
    moved = shutil.copytree(root, tmp_path / "two")
    (moved / "covid" / "src_Pcovid0_0.png").rename(moved / "covid" / "renamed.png")
    assert discover_dataset(moved).fingerprint() == before
    (moved / "covid" / "renamed.png").rename(moved / "normal" / "renamed.png")
    assert discover_dataset(moved).fingerprint() != before
    tiny_png(root / "covid" / "src_Pcovid0_0.png", 12345)
    assert discover_dataset(root).fingerprint() != before


@pytest.mark.shared
def test_shared_dataset(shared_data, cxr_manifest):
    ds = discover_dataset(shared_data / "cxr")
    assert ds.ok, [p.message for p in ds.problems]
    assert ds.classes == ["covid", "normal", "other", "pneumonia"]
    assert sum(ds.counts().values()) == len(cxr_manifest)
    assert ds.patient_id_origin == "manifest"
    expected = {row["path"]: row["patient_id"] for row in cxr_manifest}
    assert all(expected[item.path.relative_to(ds.root).as_posix()] == item.patient_id for item in ds.items)
    assert len(ds.fingerprint()) == 64


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifos_and_broken_links_never_block_or_crash_scanning(tmp_path):
    root = make_dataset(tmp_path, {"covid": 6, "normal": 6})
    os.mkfifo(root / "covid" / "pipe.png")
    os.mkfifo(root / "normal" / "PIPE_NO_EXTENSION")
    (root / "normal" / "gone.png").symlink_to(root / "nowhere.png")
    found = names(iter_radiographs(root))
    assert "pipe.png" in found and "gone.png" in found and "PIPE_NO_EXTENSION" not in found
    ds = discover_dataset(root)
    warning = messages(ds, "warning")
    assert "2 unreadable file(s)" in warning and "pipe.png" in warning and "gone.png" in warning
    assert ds.counts() == {"covid": 6, "normal": 6}


def test_invalid_patient_pattern_is_a_problem(tmp_path):
    ds = discover_dataset(make_dataset(tmp_path, {"covid": 6, "normal": 6}), patient_pattern="(unclosed")
    assert not ds.ok and "not a valid regular expression" in messages(ds, "error")
    assert ds.patient_id_origin == "file"
