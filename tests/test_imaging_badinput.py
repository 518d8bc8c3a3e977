"""The bad-input corpus of issue 2: each file reads as an image or raises the expected RadiographError subclass
with a message a person can act on — never another exception, never a hang."""

from __future__ import annotations

import os

import numpy as np
import pytest
from badinputs import CORPUS_KEYWORDS, make_bad_input_corpus, synthetic_chest, write_png_gray

from xrayviewer.imaging import ImageTooLargeError, RadiographError, read_radiograph

CORPUS_NAMES = [
    "empty", "truncated_png", "truncated_jpeg", "truncated_dicom", "damaged_png", "text_as_png", "html_as_jpg",
    "zip_as_dcm", "dicom_without_pixels", "dicom_unsupported_compression", "decompression_bomb", "one_pixel",
    "constant", "png_16bit", "rgba_transparent", "palette_inverted", "cmyk_jpeg", "non_ascii_name",
    "directory_named_png", "broken_symlink", "no_read_permission", "fifo",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_bad_input_corpus(tmp_path_factory.mktemp("bad-inputs"))


def test_corpus_covers_issue_2(corpus):
    missing = set(CORPUS_NAMES) - set(corpus) - ({"fifo"} if not hasattr(os, "mkfifo") else set())
    assert not missing


@pytest.mark.timeout(30)  # a FIFO opened for reading would block forever
@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_bad_input_gives_the_expected_outcome(corpus, name):
    if name not in corpus:
        pytest.skip(f"{name} cannot be made on this platform")
    path, expected = corpus[name]
    if name == "no_read_permission" and os.access(path, os.R_OK):
        pytest.skip("running as root (or on a file system without permissions): a chmod 000 file is still readable")
    if expected is None:
        rg = read_radiograph(path)
        assert rg.pixels.dtype == np.float32 and rg.pixels.ndim == 2 and rg.pixels.flags.c_contiguous
        assert 0.0 <= rg.pixels.min() <= rg.pixels.max() <= 1.0
        return
    with pytest.raises(RadiographError) as caught:
        read_radiograph(path)
    err = caught.value
    assert type(err) is expected, f"{name}: {type(err).__name__}: {err}"
    for word in CORPUS_KEYWORDS[name]:
        assert word.lower() in str(err).lower(), f"{name}: {word!r} not in {str(err)!r}"
    assert err.path == str(path)
    assert "Traceback" not in str(err) and len(str(err)) < 300


def test_readable_corpus_files_look_right(corpus):
    one = read_radiograph(corpus["one_pixel"][0])
    assert one.shape == (1, 1) and one.pixels[0, 0] == pytest.approx(128 / 255)
    constant = read_radiograph(corpus["constant"][0])
    assert float(constant.pixels.std()) == 0.0 and constant.pixels[0, 0] == pytest.approx(77 / 255)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = write_png_gray(tmp_path / "small.png", synthetic_chest(96, 80))
    with pytest.raises(ImageTooLargeError, match=r"image is 80×96 \(0\.0 MP\), above the 0\.0 MP limit"):
        read_radiograph(path, max_pixels=1000)
    assert read_radiograph(path, max_pixels=96 * 80).shape == (96, 80)


def test_unexpected_exceptions_are_wrapped_with_their_text(tmp_path, monkeypatch):
    from xrayviewer.imaging import reader

    def broken_decoder(*args, **kwargs):
        raise KeyError("something nobody foresaw")

    monkeypatch.setattr(reader, "read_raster", broken_decoder)
    path = write_png_gray(tmp_path / "fine.png", synthetic_chest())
    with pytest.raises(RadiographError) as caught:
        read_radiograph(path)
    assert type(caught.value) is RadiographError
    assert "something nobody foresaw" in str(caught.value) and caught.value.path == str(path)


def test_missing_file(tmp_path):
    with pytest.raises(RadiographError, match="file not found"):
        read_radiograph(tmp_path / "gone.png")


def test_random_bytes_with_an_image_extension(tmp_path):
    path = tmp_path / "noise.bmp"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes().replace(b"BM", b"bm"))
    with pytest.raises(RadiographError, match="not an image"):
        read_radiograph(path)


def test_mutated_files_raise_only_radiograph_errors(tmp_path):
    """Truncations and byte flips of valid PNG/JPEG/BMP/TIFF/DICOM: an image or a RadiographError, nothing else."""
    import warnings

    from badinputs import encode, to_u8, write_dicom

    chest = synthetic_chest(40, 30)
    seeds = {fmt.lower(): encode(chest, fmt) for fmt in ("PNG", "JPEG", "BMP", "TIFF")}
    seeds["dcm"] = write_dicom(tmp_path / "seed.dcm", (chest * 4000).astype(np.uint16), BitsStored=12,
                               WindowCenter=2000, WindowWidth=4000).read_bytes()
    seeds["bare"] = write_dicom(tmp_path / "seed", to_u8(chest), preamble=False).read_bytes()
    rng = np.random.default_rng(7)
    for attempt in range(300):
        suffix = list(seeds)[attempt % len(seeds)]
        data = bytearray(seeds[suffix])
        if attempt % 2:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 10))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        path = tmp_path / f"mutant{attempt}.{suffix}"
        path.write_bytes(bytes(data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF on the way to an error
            try:
                rg = read_radiograph(path)
            except RadiographError:
                continue
        assert rg.pixels.ndim == 2 and rg.pixels.dtype == np.float32


def test_missing_dicom_decoder_is_named(tmp_path, monkeypatch):
    """A compression whose decoder package is not installed: the message names the package to install."""
    from pydicom.uid import JPEG2000Lossless

    from badinputs import dicom_dataset
    from xrayviewer.imaging import DicomError, dicom

    class UnavailableDecoder:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"]

    from pydicom.encaps import encapsulate

    ds = dicom_dataset(np.zeros((16, 16), np.uint8))
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless  # never decoded: the decoder lookup is replaced below
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
    monkeypatch.setattr(dicom, "get_decoder", lambda uid: UnavailableDecoder())
    with pytest.raises(DicomError, match="install a decoder.*pylibjpeg-openjpeg") as caught:
        read_radiograph(tmp_path / "j2k.dcm")
    assert "JPEG 2000" in str(caught.value)


def _mutated_dicom(path, change) -> object:
    """A valid 64×48 16-bit DICOM whose header `change(ds)` makes inconsistent, written as a broken writer would."""
    from badinputs import dicom_dataset

    ds = dicom_dataset((np.arange(64 * 48, dtype=np.uint16) % 4096).reshape(64, 48), BitsStored=12)
    change(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def _text(**values: str):
    """Put text where numbers belong (VR LO), as a broken writer does."""
    from pydicom.dataelem import DataElement
    from pydicom.datadict import tag_for_keyword

    def change(ds):
        for keyword, value in values.items():
            ds[tag_for_keyword(keyword)] = DataElement(tag_for_keyword(keyword), "LO", value)
    return change


@pytest.mark.parametrize("name, change, words", [
    ("rows doubled", lambda ds: setattr(ds, "Rows", 128),
     ["header does not match its pixel data", "128 rows × 48 columns × 16 bits = 12288 bytes, file has 6144"]),
    ("two samples per pixel", lambda ds: setattr(ds, "SamplesPerPixel", 2), ["Samples per Pixel"]),
    ("photometric garbage", lambda ds: setattr(ds, "PhotometricInterpretation", "GARBAGE"), ["GARBAGE"]),
    ("rescale slope empty text", _text(RescaleSlope="", RescaleIntercept="0"),
     ["could not be decoded", "not a number"]),
    ("rescale intercept list", lambda ds: ds.update({"RescaleSlope": 1, "RescaleIntercept": [1, 2, 3]}),
     ["could not be decoded", "several values"]),
    ("frames not a number", _text(NumberOfFrames="x"), ["whole number", "'x'"]),
])
def test_dicom_header_that_does_not_fit_its_pixels_is_a_dicom_error_in_words(tmp_path, name, change, words):
    """Header fields rewritten so they no longer fit the pixel data (what the DICOM fuzz run meets): a DicomError
    that says what does not fit, never a numpy or pydicom exception name."""
    import re

    from xrayviewer.imaging import DicomError

    with pytest.raises(DicomError) as caught:
        read_radiograph(_mutated_dicom(tmp_path / "mutated.dcm", change))
    message = str(caught.value)
    assert not re.search(r"[A-Z]\w*(Error|Exception)\b", message), message
    for word in words:
        assert word in message, message


def test_truncated_dicom_is_still_called_truncated(tmp_path):
    """The file ends inside the pixel data: truncated, not a header mismatch."""
    from xrayviewer.imaging import TruncatedImageError

    path = _mutated_dicom(tmp_path / "full.dcm", lambda ds: None)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(TruncatedImageError, match="truncated"):
        read_radiograph(path)


def test_importing_imaging_loads_no_qt_tensorflow_or_matplotlib():
    import subprocess
    import sys

    code = ("import sys, xrayviewer.imaging; "
            "print(sorted(m for m in ('PySide6', 'tensorflow', 'keras', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_permission_denied_message_without_root(tmp_path, monkeypatch):
    """The root-proof twin of no_read_permission: the open itself is refused."""
    from xrayviewer.imaging import FileAccessError, reader

    path = write_png_gray(tmp_path / "locked.png", synthetic_chest())

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(reader, "open", refuse, raising=False)
    with pytest.raises(FileAccessError, match="permission denied"):
        read_radiograph(path)
