"""Synthetic radiograph files, good and bad, written on the fly (nothing binary is committed).

`make_bad_input_corpus(folder)` writes the whole bad-input corpus of issue 2 and returns
{name: (path, expected_error_class or None)}; None means the file must read as an image. `CORPUS_KEYWORDS[name]`
holds words the error message must contain. The robustness suites reuse both.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from xrayviewer.imaging.errors import (
    CorruptImageError,
    DicomError,
    EmptyFileError,
    FileAccessError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
)

NON_ASCII_NAME = "Röntgen_胸部_ñ.png"


# ---------------------------------------------------------------- synthetic chest

def synthetic_chest(rows: int = 96, cols: int = 80, seed: int = 0) -> np.ndarray:
    """float 0..1 (rows, cols): bright body, two dark lung fields, a bright mediastinum column, a little noise."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    y, x = y / rows, x / cols
    image = np.full((rows, cols), 0.08, np.float32)
    body = ((x - 0.5) / 0.46) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1
    image[body] = 0.65
    for centre_x in (0.28, 0.72):
        lung = ((x - centre_x) / 0.17) ** 2 + ((y - 0.48) / 0.3) ** 2 < 1
        image[lung] = 0.22
    image[(np.abs(x - 0.5) < 0.08) & (y > 0.2)] = 0.9
    noise = np.random.default_rng(seed).normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(image + noise, 0.0, 1.0)


def lungs_darker_than_mediastinum(pixels: np.ndarray) -> bool:
    """Middle rows: mean of the two lateral thirds < mean of the central column band (not inverted)."""
    rows, cols = pixels.shape
    middle = pixels[rows // 3: 2 * rows // 3]
    lateral = (middle[:, : cols // 3].mean() + middle[:, 2 * cols // 3:].mean()) / 2
    central = middle[:, int(cols * 0.45): int(cols * 0.55)].mean()
    return bool(lateral < central)


def to_u8(image01: np.ndarray) -> np.ndarray:
    return (np.clip(image01, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- raster writers

def write_png_gray(path: Path, image01: np.ndarray) -> Path:
    Image.fromarray(to_u8(image01), "L").save(path)
    return path


def write_png16(path: Path, image01: np.ndarray, max_value: int = 65535) -> Path:
    Image.fromarray((np.clip(image01, 0, 1) * max_value + 0.5).astype(np.uint16)).save(path)
    return path


def write_inverted_palette_png(path: Path, image01: np.ndarray) -> Path:
    """Like the JSRT files: mode P, index 0 = white, so raw indices look inverted."""
    indices = 255 - to_u8(image01)
    image = Image.fromarray(indices, "L").convert("P")  # identity palette first, then replace it
    image.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    image.frombytes(indices.tobytes())
    image.save(path)
    return path


def write_rgba_png(path: Path, image01: np.ndarray, border: int = 4) -> Path:
    """Gray image as RGBA with a fully transparent border."""
    gray = to_u8(image01)
    alpha = np.zeros_like(gray)
    alpha[border:-border, border:-border] = 255
    Image.fromarray(np.dstack([gray, gray, gray, alpha]), "RGBA").save(path)
    return path


def write_cmyk_jpeg(path: Path, image01: np.ndarray) -> Path:
    Image.fromarray(to_u8(image01), "L").convert("CMYK").save(path, "JPEG", quality=95)
    return path


def write_exif_rotated_jpeg(path: Path, stored01: np.ndarray, orientation: int = 6) -> Path:
    """Stores the pixels as given, with an EXIF tag telling viewers to turn them (6 = rotate 90° clockwise)."""
    image = Image.fromarray(to_u8(stored01), "L")
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def encode(image01: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(to_u8(image01), "L").save(buffer, fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_bomb_header(path: Path, width: int = 40000, height: int = 40000) -> Path:
    """A tiny PNG whose IHDR claims width×height 8-bit gray; nothing of that size is ever allocated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
                     + png_chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------- DICOM writers

def dicom_dataset(stored: np.ndarray, *, photometric: str = "MONOCHROME2", frames: int | None = None,
                  **tags):
    """An uncompressed DX data set around `stored` (uint8/uint16, (rows, cols) or (frames, rows, cols))."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stored = np.ascontiguousarray(stored)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "SYN0001"
    ds.PatientName = "Synthetic^Patient"
    ds.PatientAge = "042Y"
    ds.PatientSex = "F"
    ds.StudyDate = "20200401"
    ds.StudyDescription = "Chest PA"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "XRayViewer tests"
    ds.InstitutionName = "Nowhere Hospital"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape[-2:]
    bits = 8 if stored.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 else int(tags.pop("BitsStored", 16))
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    return ds


def write_dicom(path: Path, stored: np.ndarray, *, preamble: bool = True, **kwargs) -> Path:
    ds = dicom_dataset(stored, **kwargs)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # a bare data set: no preamble, no 'DICM', no file meta (old PACS exports look like this)
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


def write_dicom_without_pixels(path: Path) -> Path:
    ds = dicom_dataset(np.zeros((4, 4), np.uint8))
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.Modality = "SR"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_unsupported_compression(path: Path) -> Path:
    """Claims MPEG-2 video compression, for which no decoder exists in this stack."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    ds = dicom_dataset(np.zeros((16, 16), np.uint8))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------- the corpus

CORPUS_KEYWORDS: dict[str, tuple[str, ...]] = {
    "empty": ("empty",),
    "truncated_png": ("truncated",),
    "truncated_jpeg": ("truncated",),
    "truncated_dicom": ("truncated",),
    "damaged_png": ("damaged",),
    "text_as_png": ("not an image", "text"),
    "html_as_jpg": ("not an image", "HTML"),
    "zip_as_dcm": ("not an image", "zip"),
    "dicom_without_pixels": ("no pixel data",),
    "dicom_unsupported_compression": ("MPEG2", "decod"),
    "decompression_bomb": ("40000×40000", "1600 MP", "100 MP limit"),
    "directory_named_png": ("folder",),
    "broken_symlink": ("not found", "broken link"),
    "no_read_permission": ("permission denied",),
    "fifo": ("not a regular file",),
}


def make_bad_input_corpus(folder: str | os.PathLike) -> dict[str, tuple[Path, type | None]]:
    """Write every corpus file into `folder`; {name: (path, expected RadiographError subclass or None)}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chest = synthetic_chest()
    png, jpeg = encode(chest, "PNG"), encode(chest, "JPEG")
    corpus: dict[str, tuple[Path, type | None]] = {}

    def add(name: str, path: Path, expected: type | None) -> None:
        corpus[name] = (path, expected)

    (folder / "empty.png").write_bytes(b"")
    add("empty", folder / "empty.png", EmptyFileError)
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    add("truncated_png", folder / "truncated.png", TruncatedImageError)
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    add("truncated_jpeg", folder / "truncated.jpg", TruncatedImageError)
    full_dicom = write_dicom(folder / "full.dcm", to_u8(chest)).read_bytes()
    (folder / "full.dcm").unlink()
    (folder / "truncated.dcm").write_bytes(full_dicom[: len(full_dicom) - 2000])
    add("truncated_dicom", folder / "truncated.dcm", TruncatedImageError)
    damaged = bytearray(png)
    damaged[29] ^= 0xFF  # inside the IHDR CRC
    (folder / "damaged.png").write_bytes(bytes(damaged))
    add("damaged_png", folder / "damaged.png", CorruptImageError)
    (folder / "notes.png").write_text("Patient 12: follow-up in two weeks.\nNothing else.\n", encoding="utf-8")
    add("text_as_png", folder / "notes.png", NotAnImageError)
    (folder / "page.jpg").write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body/></html>\n")
    add("html_as_jpg", folder / "page.jpg", NotAnImageError)
    with zipfile.ZipFile(folder / "archive.dcm", "w") as archive:
        archive.writestr("image.dcm", b"not really")
    add("zip_as_dcm", folder / "archive.dcm", NotAnImageError)
    add("dicom_without_pixels", write_dicom_without_pixels(folder / "report.dcm"), DicomError)
    add("dicom_unsupported_compression", write_dicom_unsupported_compression(folder / "mpeg2.dcm"), DicomError)
    add("decompression_bomb", write_png_bomb_header(folder / "bomb.png"), ImageTooLargeError)

    add("one_pixel", write_png_gray(folder / "one_pixel.png", np.full((1, 1), 0.5)), None)
    add("constant", write_png_gray(folder / "constant.png", np.full((32, 32), 0.3)), None)
    add("png_16bit", write_png16(folder / "sixteen.png", chest), None)
    add("rgba_transparent", write_rgba_png(folder / "rgba.png", chest), None)
    add("palette_inverted", write_inverted_palette_png(folder / "palette.png", chest), None)
    add("cmyk_jpeg", write_cmyk_jpeg(folder / "cmyk.jpg", chest), None)
    add("non_ascii_name", write_png_gray(folder / NON_ASCII_NAME, chest), None)

    (folder / "x.png").mkdir(exist_ok=True)
    add("directory_named_png", folder / "x.png", FileAccessError)
    link = folder / "broken_link.png"
    if not link.is_symlink():
        link.symlink_to(folder / "does_not_exist.png")
    add("broken_symlink", link, FileAccessError)
    locked = write_png_gray(folder / "locked.png", chest)
    locked.chmod(0)
    add("no_read_permission", locked, FileAccessError)
    if hasattr(os, "mkfifo"):
        fifo = folder / "pipe.png"
        if not fifo.exists():
            os.mkfifo(fifo)
        add("fifo", fifo, FileAccessError)
    return corpus
