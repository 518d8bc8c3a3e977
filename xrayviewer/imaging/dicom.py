"""DICOM -> 0..1 grayscale pixels plus meta, through pydicom.

Order of the pixel pipeline (PS3.3 C.11): stored values -> Modality LUT (or RescaleSlope/Intercept) -> VOI LUT
(or WindowCenter/Width) -> 0..1 -> inverted when MONOCHROME1, so higher is always brighter.
"""

from __future__ import annotations

import math
import re
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from xrayviewer.imaging.display import window_level
from xrayviewer.imaging.errors import DicomError, RadiographError, TruncatedImageError, UnsupportedImageError
from xrayviewer.imaging.raster import check_pixel_limit, luminance

# Tags a viewer shows beside the image; stored as strings in meta["dicom"] when present and non-empty.
VIEWER_TAGS = (
    "PatientID", "PatientName", "PatientAge", "PatientSex", "PatientBirthDate",
    "StudyDate", "StudyTime", "StudyDescription", "SeriesDescription", "AccessionNumber",
    "Modality", "ViewPosition", "BodyPartExamined", "ImageLaterality", "PatientOrientation",
    "Manufacturer", "ManufacturerModelName", "InstitutionName",
    "PixelSpacing", "ImagerPixelSpacing", "PhotometricInterpretation",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
)
_PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom(fileobj: BinaryIO, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode an open DICOM file (with or without the 128-byte preamble)."""
    ds = _parse(fileobj)
    try:
        return _read_dataset(ds, max_pixels)
    except RadiographError:
        raise
    except Exception as err:  # pydicom parses elements lazily: a damaged one fails only when first used
        raise DicomError(f"DICOM header is damaged: {_reason(err)}") from err


def _read_dataset(ds: Dataset, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    meta: dict[str, Any] = {"format": "DICOM", "dicom": viewer_tags(ds), "notes": []}
    if not any(tag in ds for tag in _PIXEL_DATA_TAGS):
        raise DicomError(_no_pixel_data_message(ds))
    rows, cols = _dimensions(ds)
    check_pixel_limit(rows, cols, max_pixels)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    meta.update(original_shape=(rows, cols), photometric=photometric, mode=photometric,
                bit_depth=int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8),
                transfer_syntax=_transfer_syntax(ds, meta["notes"]).name)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        meta["notes"].append(f"multi-frame DICOM: first of {frames} frames shown")
    stored = _decode_first_frame(ds)
    try:
        return _stored_to_display(stored, ds, meta), meta
    except RadiographError:
        raise
    except (TypeError, ValueError, ArithmeticError, AttributeError, IndexError, KeyError) as err:
        # rescale / LUT / window values that are text, lists or the wrong size fail inside numpy
        raise DicomError(f"DICOM pixel data could not be decoded: {_reason(err)}") from err


def _stored_to_display(stored: np.ndarray, ds: Dataset, meta: dict[str, Any]) -> np.ndarray:
    """Decoded frame (colour or monochrome) -> 0..1 grayscale, higher = brighter."""
    if stored.ndim == 3 and stored.shape[-1] in (3, 4):  # RGB (YBR is already converted by pydicom)
        return luminance(stored, float(2 ** int(ds.get("BitsAllocated", 8)) - 1))
    if stored.ndim != 2:
        raise UnsupportedImageError(f"DICOM pixel data has shape {stored.shape}: not a 2-D image")
    if meta["photometric"] == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)  # uint8 or uint16, after the palette's entry size
        return luminance(rgb, float(np.iinfo(rgb.dtype).max))
    pixels = _monochrome_to_display(stored, ds, meta)
    if meta["photometric"] == "MONOCHROME1":  # stored with 0 = white
        pixels = 1.0 - pixels
    return pixels


def viewer_tags(ds: Dataset) -> dict[str, str]:
    """The patient/study/image tags a viewer shows, as strings (absent or unreadable tags are left out)."""
    tags: dict[str, str] = {}
    for keyword in VIEWER_TAGS:
        try:
            value = ds.get(keyword)
        except Exception:  # a malformed value in one tag must not hide the image
            continue
        text = _tag_text(value)
        if text:
            tags[keyword] = text
    sop_class = ds.get("SOPClassUID")
    if sop_class:
        tags["SOPClass"] = getattr(sop_class, "name", str(sop_class))
    return tags


def _tag_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _parse(fileobj: BinaryIO) -> Dataset:
    try:
        return pydicom.dcmread(fileobj, force=True)
    except InvalidDicomError as err:
        raise DicomError(f"not a readable DICOM file ({err})") from err
    except EOFError as err:
        raise TruncatedImageError("DICOM file is truncated: it ends in the middle of its header") from err
    except Exception as err:  # pydicom raises assorted errors on garbage headers
        raise DicomError(f"DICOM header is damaged: {_reason(err)}") from err


def _no_pixel_data_message(ds: Dataset) -> str:
    """An image object without pixels was cut off before its pixel data; anything else is not an image."""
    sop_class = ds.get("SOPClassUID")
    if "Rows" in ds or "Image Storage" in getattr(sop_class, "name", ""):
        return "DICOM has no pixel data although its header describes an image: the file is probably truncated"
    return f"DICOM has no pixel data: it is {_what_it_is(ds)}, not an image"


def _what_it_is(ds: Dataset) -> str:
    sop_class = ds.get("SOPClassUID")
    name = getattr(sop_class, "name", "") if sop_class else ""
    if name and name != str(sop_class):
        return f"a '{name}' object"
    modality = ds.get("Modality")
    return f"a {modality} object" if modality else "a header-only object (e.g. a report or a DICOMDIR)"


def _dimensions(ds: Dataset) -> tuple[int, int]:
    try:
        return int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as err:
        raise DicomError("DICOM pixel data has no valid Rows/Columns: the header is incomplete") from err


def _transfer_syntax(ds: Dataset, notes: list[str]):
    """The file's transfer syntax; a bare data set (no file meta) gets the one pydicom parsed it with."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        implicit, _little_endian = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = syntax
        notes.append("DICOM without file meta header: transfer syntax inferred")
    return syntax


def _decode_first_frame(ds: Dataset) -> np.ndarray:
    """Decode only frame 0, after checking a decoder for the compression exists (to name what is missing)."""
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise DicomError(
            f"cannot decode this DICOM: its compression '{syntax.name}' ({syntax}) is not supported "
            "by any installed decoder; convert it to uncompressed DICOM or PNG") from err
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise DicomError(f"cannot decode this DICOM's '{syntax.name}' compression: install a decoder ({needs})")
    cut_short = _file_ends_inside_pixel_data(ds)
    try:
        return pixel_array(ds, index=0)
    except (ValueError, EOFError) as err:
        sizes = None if syntax.is_compressed else _pixel_data_sizes(ds)
        shorter = "less than" in str(err) or "truncat" in str(err).lower() or isinstance(err, EOFError)
        if shorter and not cut_short and sizes is not None and sizes[1] < sizes[0]:
            # the pixel data is all there, as long as its own length says: the header describes a bigger image
            raise DicomError(f"DICOM header does not match its pixel data ({_size_text(ds, sizes)})") from err
        if shorter:
            raise TruncatedImageError("DICOM is truncated: its pixel data is shorter than the header says") from err
        if sizes is not None and "larger than expected" in str(err):
            raise DicomError(f"DICOM header does not match its pixel data ({_size_text(ds, sizes)})") from err
        raise DicomError(f"DICOM pixel data could not be decoded: {_reason(err)}") from err
    except Exception as err:
        raise DicomError(f"DICOM pixel data could not be decoded: {_reason(err)}") from err


def _file_ends_inside_pixel_data(ds: Dataset) -> bool:
    """True when the file stops before the end PixelData declares (a cut-off copy), or when that cannot be told."""
    try:
        raw = ds.get_item("PixelData")
        length = getattr(raw, "length", None)
        if length is None or length == 0xFFFFFFFF:   # already decoded, or encapsulated (undefined length)
            return True
        return raw.value is None or len(raw.value) < length
    except Exception:  # noqa: BLE001 - unknown: keep calling it truncated, as before
        return True


def _pixel_data_sizes(ds: Dataset) -> tuple[int, int] | None:
    """(bytes the header describes for all frames, bytes the file holds) of uncompressed PixelData, or None when
    the header values are not plain sizes (pydicom's own validation then names the bad one)."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        actual = len(ds.PixelData)
    except Exception:  # noqa: BLE001 - any unreadable value: leave the judgement to pydicom
        return None
    if min(rows, cols, samples, bits, frames) < 1 or not (bits == 1 or bits % 8 == 0):
        return None
    expected = (rows * cols * samples * frames * bits + 7) // 8
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422" and samples == 3:
        expected = expected * 2 // 3   # 4:2:2 subsampled: two samples per pixel on disk
    return expected, actual


def _size_text(ds: Dataset, sizes: tuple[int, int]) -> str:
    expected, actual = sizes
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    parts = [f"{int(ds.Rows)} rows", f"{int(ds.Columns)} columns"]
    parts += [f"{samples} samples"] if samples != 1 else []
    parts += [f"{frames} frames"] if frames != 1 else []
    return f"{' × '.join(parts)} × {int(ds.BitsAllocated)} bits = {expected} bytes, file has {actual}"


def _reason(err: BaseException) -> str:
    """A short reason a person can act on, from what pydicom or numpy raised (never an exception class name)."""
    text = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, TypeError) and ("ufunc" in text or "dtype" in text or "operand" in text):
        return "a rescale, window or LUT value in the header is missing or not a number"
    if "could not be broadcast" in text:
        return "the header gives several values where one is expected (rescale slope or intercept, window or LUT)"
    number = re.match(r"invalid literal for int\(\) with base \d+: (.*)", text)
    if number:
        return f"a header field that must be a whole number holds {number.group(1)}"
    if text.startswith("Missing required element: "):
        return f"the header lacks the required {text.removeprefix('Missing required element: ')}"
    if "Palette Color Lookup Table" in text:
        return "a PALETTE COLOR image without its palette (colour lookup tables)"
    if "color space conversion" in text:
        return "its photometric interpretation does not fit its bit depth"
    return text[:200] or "the data does not fit the header"


def _monochrome_to_display(stored: np.ndarray, ds: Dataset, meta: dict[str, Any]) -> np.ndarray:
    """Modality LUT, then VOI LUT / window (or a full-range scale), to 0..1."""
    values = apply_modality_lut(stored, ds)  # stays integer without a rescale, as a VOI LUT wants its input
    if ds.get("VOILUTSequence"):
        shown = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
        meta["voi"] = "VOI LUT"
        return _scale(shown, *_lut_range(ds.VOILUTSequence[0]))
    values = values.astype(np.float64)
    window = _first_window(ds, meta)
    if window is not None:
        center, width = window
        meta.update(window_center=center, window_width=width, voi="window")
        if str(ds.get("VOILUTFunction", "LINEAR")).upper() == "SIGMOID":
            with np.errstate(over="ignore"):  # exp overflow far from the centre is just 0
                return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32)
        return window_level(values, center, width)
    return _full_range(values, stored, ds, meta)


def _lut_range(lut: Dataset) -> tuple[float, float]:
    """Output range of a LUT: its actual entries (some LUTs declare 16 bits but hold 12-bit values)."""
    data = lut.LUTData
    if isinstance(data, (bytes, bytearray)):  # OW: two bytes per entry, whatever the entry bit depth
        entries = int(lut.LUTDescriptor[0]) or 65536
        data = np.frombuffer(data, dtype="<u2" if len(data) >= 2 * entries else np.uint8)
    values = np.asarray(data, dtype=np.float64)
    return float(values.min()), float(values.max())


def _first_window(ds: Dataset, meta: dict[str, Any]) -> tuple[float, float] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    centers, widths = ds.WindowCenter, ds.WindowWidth
    many = isinstance(centers, pydicom.multival.MultiValue)
    try:
        center = float(centers[0] if many else centers)
        width = float(widths[0] if isinstance(widths, pydicom.multival.MultiValue) else widths)
    except (TypeError, ValueError, IndexError):
        meta["notes"].append("window centre/width in the file is unreadable: ignored")
        return None
    if not (math.isfinite(center) and math.isfinite(width) and width > 0):
        meta["notes"].append("window centre/width in the file is not usable: ignored")
        return None
    if many and len(centers) > 1:
        meta["notes"].append(f"file offers {len(centers)} windows: the first is used")
    return center, width


def _full_range(values: np.ndarray, stored: np.ndarray, ds: Dataset, meta: dict[str, Any]) -> np.ndarray:
    """No window in the file: 8-bit data keeps its 0..255 scale (like a PNG), deeper data is stretched."""
    bits = int(meta["bit_depth"])
    rescaled = "RescaleSlope" in ds or "ModalityLUTSequence" in ds
    if bits <= 8 and not rescaled and int(ds.get("PixelRepresentation", 0)) == 0:
        return _scale(values, 0.0, 255.0)
    low, high = float(values.min()), float(values.max())
    meta["notes"].append(f"no window in the file: stretched from {low:g}..{high:g}")
    return _scale(values, low, high)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
