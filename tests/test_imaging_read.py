"""read_radiograph on every real file in ../shared and on synthetic twins of each kind; display and hashing."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from badinputs import (
    dicom_dataset,
    lungs_darker_than_mediastinum,
    synthetic_chest,
    to_u8,
    write_cmyk_jpeg,
    write_dicom,
    write_exif_rotated_jpeg,
    write_inverted_palette_png,
    write_png16,
    write_png_gray,
    write_rgba_png,
)
from PIL import Image

from xrayviewer.imaging import Radiograph, file_sha256, read_radiograph
from xrayviewer.imaging.display import auto_window, colorize, invert, overlay, to_uint8, window_level

CHEST = synthetic_chest()


def assert_radiograph_invariants(rg: Radiograph) -> None:
    px = rg.pixels
    assert px.dtype == np.float32 and px.ndim == 2 and px.flags.c_contiguous
    assert 0.0 <= float(px.min()) and float(px.max()) <= 1.0
    for key in ("format", "bit_depth", "original_shape", "photometric", "mode", "notes", "file_size"):
        assert key in rg.meta, key


# ---------------------------------------------------------------- real files in ../shared

@pytest.mark.shared
def test_every_shared_radiograph_reads_and_looks_right(shared_data, cxr_manifest):
    problems = []
    for row in cxr_manifest:
        path = shared_data / "cxr" / row["path"]
        rg = read_radiograph(path)
        assert_radiograph_invariants(rg)
        expected_shape = (int(row["height"] or 0), int(row["width"] or 0))
        if min(expected_shape) > 0 and rg.shape != expected_shape:  # 0 = not recorded (the DICOM)
            problems.append(f"{row['path']}: shape {rg.shape} != manifest {row['height']}x{row['width']}")
        if float(rg.pixels.std()) < 0.02:
            problems.append(f"{row['path']}: nearly constant (std {rg.pixels.std():.3f})")
        if rg.meta["file_size"] != int(row["bytes"]):
            problems.append(f"{row['path']}: file_size {rg.meta['file_size']} != {row['bytes']}")
    assert not problems, "\n".join(problems)


@pytest.mark.shared
def test_jsrt_inverted_palettes_come_out_with_dark_lungs(shared_data, cxr_manifest):
    jsrt = [row for row in cxr_manifest if row["source"] == "jsrt"]
    assert jsrt, "no JSRT files in the manifest"
    for row in jsrt:
        rg = read_radiograph(shared_data / "cxr" / row["path"])
        assert rg.meta["mode"] == "P" and rg.meta["photometric"] == "PALETTE COLOR"
        assert lungs_darker_than_mediastinum(rg.pixels), f"{row['path']} reads inverted"


@pytest.mark.shared
def test_real_dicom_is_monochrome2_8bit_with_viewer_tags(shared_data, cxr_manifest):
    [row] = [r for r in cxr_manifest if r["format"] == "DICOM"]
    rg = read_radiograph(shared_data / "cxr" / row["path"])
    assert rg.meta["format"] == "DICOM"
    assert rg.meta["photometric"] == "MONOCHROME2" and rg.meta["bit_depth"] == 8
    assert rg.shape == (1024, 1024)
    tags = rg.meta["dicom"]
    assert tags["PatientID"] == "Covid0000" and tags["Modality"] == "DX"
    assert tags["StudyDescription"] == "No Finding" and tags["PatientSex"] == "M"
    assert lungs_darker_than_mediastinum(rg.pixels)


# ---------------------------------------------------------------- synthetic twins: raster

def test_gray_png_round_trips(tmp_path):
    rg = read_radiograph(write_png_gray(tmp_path / "chest.png", CHEST))
    assert_radiograph_invariants(rg)
    assert rg.meta["format"] == "PNG" and rg.meta["bit_depth"] == 8 and rg.meta["photometric"] == "MONOCHROME2"
    np.testing.assert_allclose(rg.pixels, to_u8(CHEST) / 255.0, atol=1e-6)
    assert lungs_darker_than_mediastinum(rg.pixels)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "JPEG"])
def test_other_raster_formats(tmp_path, fmt):
    path = tmp_path / f"chest.{fmt.lower()}"
    Image.fromarray(to_u8(CHEST), "L").save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    rg = read_radiograph(path)
    assert rg.meta["format"] == fmt and rg.shape == CHEST.shape
    assert float(np.abs(rg.pixels - CHEST).mean()) < 0.02  # JPEG is lossy


def test_inverted_palette_png_decodes_through_the_palette(tmp_path):
    path = write_inverted_palette_png(tmp_path / "jsrt_like.png", CHEST)
    rg = read_radiograph(path)
    assert np.asarray(Image.open(path))[48, 40] < 50 and rg.pixels[48, 40] > 0.8  # bright mediastinum, index ~25
    assert rg.meta["mode"] == "P"
    np.testing.assert_allclose(rg.pixels, to_u8(CHEST) / 255.0, atol=1 / 255 + 1e-6)
    assert lungs_darker_than_mediastinum(rg.pixels)


def test_16bit_png_keeps_its_precision(tmp_path):
    rg = read_radiograph(write_png16(tmp_path / "deep.png", CHEST))
    assert rg.meta["bit_depth"] == 16
    np.testing.assert_allclose(rg.pixels, CHEST, atol=1e-4)


@pytest.mark.parametrize("bits", [8, 10, 12, 14])
def test_fewer_bits_in_a_16bit_png_are_scaled_to_their_depth(tmp_path, bits):
    rg = read_radiograph(write_png16(tmp_path / "shallow.png", CHEST, max_value=2 ** bits - 1))
    np.testing.assert_allclose(rg.pixels, CHEST, atol=1.0 / (2 ** bits - 1))
    assert any(f"{bits}-bit values" in note for note in rg.meta["notes"])


def test_rgba_transparency_becomes_black(tmp_path):
    rg = read_radiograph(write_rgba_png(tmp_path / "figure.png", CHEST, border=4))
    assert float(rg.pixels[:4].max()) == 0.0 and float(rg.pixels[:, -4:].max()) == 0.0
    np.testing.assert_allclose(rg.pixels[4:-4, 4:-4], to_u8(CHEST)[4:-4, 4:-4] / 255.0, atol=2 / 255)
    assert any("transparent" in note for note in rg.meta["notes"])


def test_colour_png_is_luminance_with_a_note(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # pure red figure annotation
    Image.fromarray(rgb, "RGB").save(tmp_path / "red.png")
    rg = read_radiograph(tmp_path / "red.png")
    np.testing.assert_allclose(rg.pixels, 0.299 * 200 / 255, atol=1e-3)
    assert any("colour" in note for note in rg.meta["notes"])


def test_colour_conversion_in_bands_equals_the_whole_image_formula(tmp_path, monkeypatch):
    """Big colour photos are converted band by band (memory): the values must not depend on the banding."""
    from xrayviewer.imaging import raster

    rgb = np.random.default_rng(3).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    monkeypatch.setattr(raster, "_BAND_PIXELS", 29 * 5)   # 8 bands, the last one short
    Image.fromarray(rgb, "RGB").save(tmp_path / "photo.png")
    whole = (rgb.astype(np.float32) @ raster._LUMA) * np.float32(1 / 255.0)
    assert np.array_equal(read_radiograph(tmp_path / "photo.png").pixels, whole)


def test_non_finite_values_become_0_or_1(tmp_path):
    from xrayviewer.imaging.reader import _finish

    values = np.array([[np.nan, np.inf, -np.inf, 0.25], [2.0, -1.0, 0.5, 1.0]], np.float32)
    assert _finish(values).tolist() == [[0.0, 1.0, 0.0, 0.25], [1.0, 0.0, 0.5, 1.0]]


def test_cmyk_jpeg_reads_like_the_gray_original(tmp_path):
    rg = read_radiograph(write_cmyk_jpeg(tmp_path / "cmyk.jpg", CHEST))
    assert rg.meta["mode"] == "CMYK"
    assert np.corrcoef(rg.pixels.ravel(), CHEST.ravel())[0, 1] > 0.97
    assert lungs_darker_than_mediastinum(rg.pixels)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.full((60, 100), 0.2, np.float32)
    stored[:, :15] = 0.9  # bright band on the stored left edge
    rg = read_radiograph(write_exif_rotated_jpeg(tmp_path / "phone.jpg", stored, orientation=6))
    assert rg.shape == (100, 60) and rg.meta["original_shape"] == (60, 100)
    assert rg.pixels[:10].mean() > 0.8 and rg.pixels[-10:].mean() < 0.3  # rotated clockwise: left edge -> top
    assert any("EXIF" in note for note in rg.meta["notes"])


def test_non_ascii_path(tmp_path):
    folder = tmp_path / "Ärzte Daten"
    folder.mkdir()
    rg = read_radiograph(write_png_gray(folder / "Röntgen_胸部.png", CHEST))
    assert rg.path.endswith("Röntgen_胸部.png") and rg.shape == CHEST.shape


# ---------------------------------------------------------------- synthetic twins: DICOM

def test_dicom_monochrome2_with_viewer_tags(tmp_path):
    rg = read_radiograph(write_dicom(tmp_path / "mono2.dcm", to_u8(CHEST)))
    assert_radiograph_invariants(rg)
    np.testing.assert_allclose(rg.pixels, to_u8(CHEST) / 255.0, atol=1e-6)
    tags = rg.meta["dicom"]
    expected = {"PatientID": "SYN0001", "PatientName": "Synthetic^Patient", "PatientAge": "042Y",
                "PatientSex": "F", "StudyDate": "20200401", "Modality": "DX", "ViewPosition": "PA",
                "BodyPartExamined": "CHEST", "Manufacturer": "XRayViewer tests", "InstitutionName": "Nowhere Hospital"}
    assert expected.items() <= tags.items()
    assert all(isinstance(v, str) for v in tags.values())


def test_dicom_monochrome1_is_inverted_for_display(tmp_path):
    rg = read_radiograph(write_dicom(tmp_path / "mono1.dcm", 255 - to_u8(CHEST), photometric="MONOCHROME1"))
    assert rg.meta["photometric"] == "MONOCHROME1"
    np.testing.assert_allclose(rg.pixels, to_u8(CHEST) / 255.0, atol=1e-6)
    assert lungs_darker_than_mediastinum(rg.pixels)


def test_dicom_rescale_and_window_are_applied(tmp_path):
    stored = (CHEST * 1000 + 24).astype(np.uint16)  # modality value = 2*stored - 1024 = 2000*chest - 976
    path = write_dicom(tmp_path / "rescaled.dcm", stored, BitsStored=12, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=24, WindowWidth=2000)
    rg = read_radiograph(path)
    assert rg.meta["window_center"] == 24 and rg.meta["window_width"] == 2000 and rg.meta["bit_depth"] == 12
    np.testing.assert_allclose(rg.pixels, CHEST, atol=2e-3)


def test_dicom_window_narrower_than_the_data_clips(tmp_path):
    stored = (CHEST * 4000).astype(np.uint16)
    rg = read_radiograph(write_dicom(tmp_path / "narrow.dcm", stored, BitsStored=12,
                                     WindowCenter=[2000, 1000], WindowWidth=[1000, 500]))
    expected = np.clip((CHEST * 4000 - 1500) / 1000, 0, 1)
    np.testing.assert_allclose(rg.pixels, expected, atol=2e-3)
    assert any("2 windows" in note for note in rg.meta["notes"])


def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset

    stored = (CHEST * 4095).astype(np.uint16)
    path = write_dicom(tmp_path / "voilut.dcm", stored, BitsStored=12)
    import pydicom

    ds = pydicom.dcmread(path)
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = (np.sqrt(np.arange(4096) / 4095) * 65535).astype("<u2").tobytes()  # a gamma curve
    ds.VOILUTSequence = [lut]
    ds.save_as(path, enforce_file_format=True)
    rg = read_radiograph(path)
    assert rg.meta["voi"] == "VOI LUT"
    np.testing.assert_allclose(rg.pixels, np.sqrt(stored / 4095), atol=2e-3)


def test_dicom_deep_data_without_window_is_stretched(tmp_path):
    stored = (CHEST * 3000 + 500).astype(np.uint16)
    rg = read_radiograph(write_dicom(tmp_path / "nowindow.dcm", stored, BitsStored=12))
    assert rg.pixels.min() == 0.0 and rg.pixels.max() == 1.0
    assert any("stretched" in note for note in rg.meta["notes"])


def test_dicom_multiframe_shows_the_first_frame_with_a_note(tmp_path):
    frames = np.stack([to_u8(CHEST), np.full(CHEST.shape, 10, np.uint8), np.full(CHEST.shape, 250, np.uint8)])
    rg = read_radiograph(write_dicom(tmp_path / "multi.dcm", frames, frames=3))
    np.testing.assert_allclose(rg.pixels, to_u8(CHEST) / 255.0, atol=1e-6)
    assert any("first of 3 frames" in note for note in rg.meta["notes"])


def test_dicom_without_preamble_or_extension(tmp_path):
    rg = read_radiograph(write_dicom(tmp_path / "IM0001", to_u8(CHEST), preamble=False))
    assert rg.meta["format"] == "DICOM" and rg.shape == CHEST.shape
    assert rg.meta["dicom"]["PatientID"] == "SYN0001"


def test_dicom_jpeg2000_compressed_decodes(tmp_path):
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless

    if not get_encoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 encoder installed (pylibjpeg-openjpeg) to build the compressed twin")
    ds = dicom_dataset(to_u8(CHEST))
    ds.compress(JPEG2000Lossless)
    ds.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
    rg = read_radiograph(tmp_path / "j2k.dcm")
    assert "JPEG 2000" in rg.meta["transfer_syntax"]
    np.testing.assert_allclose(rg.pixels, to_u8(CHEST) / 255.0, atol=1e-6)


def test_dicom_rgb_is_converted_to_luminance(tmp_path):
    rgb = np.dstack([to_u8(CHEST)] * 3)
    ds = dicom_dataset(rgb[..., 0])
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    rg = read_radiograph(tmp_path / "rgb.dcm")
    np.testing.assert_allclose(rg.pixels, to_u8(CHEST) / 255.0, atol=1e-5)


# ---------------------------------------------------------------- display

def test_window_level_maps_the_window_to_0_1():
    ramp = np.linspace(0, 1, 11, dtype=np.float32)
    out = window_level(ramp, center=0.5, width=0.2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0, 0, 0, 0.5, 1, 1, 1, 1, 1], atol=1e-6)


def test_auto_window_spans_the_1st_to_99th_percentile():
    pixels = np.linspace(0, 1, 10_000, dtype=np.float32).reshape(100, 100)
    center, width = auto_window(pixels)
    assert center == pytest.approx(0.5, abs=0.01) and width == pytest.approx(0.98, abs=0.01)
    center, width = auto_window(np.full((8, 8), 0.3, np.float32))  # constant: a tiny but valid window
    assert width > 0


def test_invert_and_to_uint8():
    px = np.array([[0.0, 0.25, 1.0]], np.float32)
    np.testing.assert_allclose(invert(px), [[1.0, 0.75, 0.0]])
    assert to_uint8(np.array([[-1, 0, 0.5, 1, 2]], np.float32)).tolist() == [[0, 0, 128, 255, 255]]


def test_colorize_uses_the_matplotlib_colormap():
    from matplotlib import colormaps

    rgb = colorize(np.array([[0.0, 1.0]], np.float32), "inferno")
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 2, 3)
    expected = (np.asarray(colormaps["inferno"]([0.0, 1.0]))[:, :3] * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(rgb[0], expected)
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(np.zeros((2, 2)), "no-such-map")


def test_overlay_blends_and_resizes_the_heatmap():
    gray = np.full((40, 60), 0.5, np.float32)
    heat = np.zeros((7, 7), np.float32)  # conv-grid size
    out = overlay(gray, heat, alpha=0.0, cmap_name="jet")
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8 and np.all(out == 128)
    full = overlay(gray, np.ones((40, 60), np.float32), alpha=1.0, cmap_name="jet")
    np.testing.assert_array_equal(full[0, 0], colorize(np.ones((1, 1)), "jet")[0, 0])


# ---------------------------------------------------------------- hashing

def test_file_sha256_matches_hashlib_and_follows_edits(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"first")
    assert file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"second, longer")
    os.utime(path, ns=(1, 1))  # a new mtime and size: the memo must not serve the old hash
    assert file_sha256(path) == hashlib.sha256(b"second, longer").hexdigest()


def test_file_sha256_is_memoised(tmp_path, monkeypatch):
    from xrayviewer.imaging import hashing

    path = tmp_path / "b.bin"
    path.write_bytes(b"x" * 100)
    first = file_sha256(path)
    monkeypatch.setattr(hashing, "_hash_bytes", lambda p: pytest.fail("hashed again despite an unchanged file"))
    assert file_sha256(str(path)) == first


def test_file_sha256_of_a_missing_file_is_a_file_access_error(tmp_path):
    from xrayviewer.imaging import FileAccessError

    with pytest.raises(FileAccessError):
        file_sha256(tmp_path / "missing.png")
    with pytest.raises(FileAccessError):
        file_sha256(tmp_path / "missing.png", memo=False)


def test_file_sha256_without_memo_sees_a_change_that_kept_size_and_mtime(tmp_path):
    path = tmp_path / "c.bin"
    path.write_bytes(b"abc")
    stat = path.stat()
    assert file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    path.write_bytes(b"abd")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # `cp -p`, bit rot: the memo cannot tell
    assert file_sha256(path, memo=False) == hashlib.sha256(b"abd").hexdigest()


def test_dicom_sigmoid_voi_function(tmp_path):
    stored = (CHEST * 4000).astype(np.uint16)
    rg = read_radiograph(write_dicom(tmp_path / "sigmoid.dcm", stored, BitsStored=12, WindowCenter=2000,
                                     WindowWidth=1000, VOILUTFunction="SIGMOID"))
    expected = 1 / (1 + np.exp(-4 * (stored.astype(np.float64) - 2000) / 1000))
    np.testing.assert_allclose(rg.pixels, expected, atol=1e-5)


def test_window_level_keeps_float64_dicom_values_finite():
    values = np.array([[-1e300, 0.0, 1e300]])
    np.testing.assert_allclose(window_level(values, 0.0, 2e300), [[0.0, 0.5, 1.0]])
