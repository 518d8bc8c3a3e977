"""PNG / JPEG / BMP / TIFF (anything Pillow decodes) -> 0..1 grayscale pixels plus meta.

Pillow rather than OpenCV because it applies palettes (the JSRT PNGs have inverted palettes), exposes the size before
decoding (decompression-bomb guard), reads EXIF orientation, handles CMYK JPEGs and reads from an open file object
(so non-ASCII paths just work).
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xrayviewer.imaging.errors import CorruptImageError, ImageTooLargeError, TruncatedImageError, UnsupportedImageError

# ITU-R BT.601 luma, the weights Pillow's convert("L") uses, so palette and RGB images read like Pillow shows them.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_EXIF_ORIENTATION_TAG = 0x0112
_STORED_BIT_DEPTHS = (8, 10, 12, 14, 16)
_BAND_PIXELS = 1 << 20          # pixels per band when converting colour to gray
# What Pillow's plugins raise on damaged data (TypeError: a TIFF without dimensions; KeyError/IndexError: bad tags).
_PILLOW_DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, EOFError, zlib.error,
                         struct.error)
_COLOUR_NOTE_THRESHOLD = 8 / 255  # channels differing more than this somewhere: the image really has colour

_PHOTOMETRIC = {
    "1": "MONOCHROME2", "L": "MONOCHROME2", "LA": "MONOCHROME2", "I": "MONOCHROME2", "F": "MONOCHROME2",
    "I;16": "MONOCHROME2", "I;16L": "MONOCHROME2", "I;16B": "MONOCHROME2", "I;16N": "MONOCHROME2",
    "P": "PALETTE COLOR", "PA": "PALETTE COLOR", "RGB": "RGB", "RGBA": "RGB", "RGBX": "RGB",
    "CMYK": "CMYK", "YCbCr": "YBR", "LAB": "LAB", "HSV": "HSV",
}


def read_raster(fileobj: BinaryIO, sniffed_format: str, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode an open raster file. Raises RadiographError subclasses only for expected problems."""
    image = _open_lazily(fileobj, sniffed_format, max_pixels)
    width, height = image.size
    check_pixel_limit(height, width, max_pixels)
    notes: list[str] = []
    meta: dict[str, Any] = {
        "format": image.format or sniffed_format,
        "mode": image.mode,
        "photometric": _PHOTOMETRIC.get(image.mode, image.mode),
        "original_shape": (height, width),
        "bit_depth": _bit_depth(image.mode),
        "notes": notes,
    }
    try:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            notes.append(f"multi-page file: first of {frames} pages shown")
        image.load()
        image = _apply_exif_orientation(image, notes)
        pixels = _to_gray01(image, notes)
    except _PILLOW_DECODE_ERRORS as err:
        raise _decode_error(err, meta["format"]) from err
    return pixels, meta


def check_pixel_limit(rows: int, cols: int, max_pixels: int) -> None:
    """Refuse images above the limit before allocating them (decompression-bomb guard)."""
    if rows * cols > max_pixels:
        raise _too_large(rows, cols, max_pixels)


def _too_large(rows: int, cols: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image is {cols}×{rows} ({_megapixels(rows * cols)} MP), above the {_megapixels(max_pixels)} MP limit")


def luminance(rgb: np.ndarray, max_value: float) -> np.ndarray:
    """(rows, cols, 3+) in 0..max_value -> (rows, cols) float32 0..1.

    Band by band: a whole-image float copy of the colour channels would be 12 bytes a pixel (115 MB for a 9.5 Mpx
    photo of a film) on top of the result."""
    out = np.empty(rgb.shape[:2], np.float32)
    scale = np.float32(1.0 / max_value)
    rows = max(1, _BAND_PIXELS // max(1, rgb.shape[1]))
    for top in range(0, rgb.shape[0], rows):
        band = rgb[top:top + rows, :, :3].astype(np.float32) @ _LUMA
        band *= scale
        out[top:top + rows] = band
    return out


def _open_lazily(fileobj: BinaryIO, sniffed_format: str, max_pixels: int) -> Image.Image:
    """Image.open reads only the header: the size is known before any pixel is decoded."""
    try:
        return Image.open(fileobj)
    except Image.DecompressionBombError as err:
        raise _bomb_error(err, fileobj, max_pixels) from err
    except UnidentifiedImageError as err:
        raise CorruptImageError(
            f"file is damaged or truncated: it starts like a {sniffed_format} but its header cannot be read") from err
    except _PILLOW_DECODE_ERRORS as err:
        raise _decode_error(err, sniffed_format) from err


def _bomb_error(err: Exception, fileobj: BinaryIO, max_pixels: int) -> ImageTooLargeError:
    """Pillow refused the size in the header itself; report the size the way check_pixel_limit does."""
    fileobj.seek(0)
    head = fileobj.read(24)
    if head.startswith(b"\x89PNG") and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return _too_large(height, width, max_pixels)
    found = re.search(r"\((\d+) pixels\)", str(err))
    size = f"{_megapixels(int(found.group(1)))} MP" if found else "enormous"
    return ImageTooLargeError(f"image is {size}, above the {_megapixels(max_pixels)} MP limit")


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f}" if pixels >= 10e6 else f"{pixels / 1e6:.1f}"


def _bit_depth(mode: str) -> int:
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    if mode in ("I", "F"):
        return 32
    return 8


def _apply_exif_orientation(image: Image.Image, notes: list[str]) -> Image.Image:
    """Phones and some scanners store the image sideways plus an EXIF tag saying how to turn it."""
    orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        image = ImageOps.exif_transpose(image)
        notes.append(f"turned upright per EXIF orientation {orientation}")
    return image


def _to_gray01(image: Image.Image, notes: list[str]) -> np.ndarray:
    """Any Pillow mode -> float32 (rows, cols) 0..1, higher = brighter."""
    mode = image.mode
    if mode in ("P", "PA"):  # decode through the palette (JSRT palettes are inverted: index 0 = white)
        if mode == "P" and "transparency" not in image.info:
            return _palette_gray01(image, notes)
        image = image.convert("RGBA")
        mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.float32)
    if mode == "L":
        gray = np.asarray(image, dtype=np.float32)
        gray *= np.float32(1.0 / 255.0)    # in place: a 15 Mpx film is 60 MB as float32
        return gray
    if mode.startswith("I;16") or mode == "I":
        return _integer_gray01(np.asarray(image), notes)
    if mode == "F":
        return _stretch(np.asarray(image, dtype=np.float32), notes)
    if mode == "LA":
        gray_alpha = np.asarray(image, dtype=np.float32) * np.float32(1.0 / 255.0)
        return _composite_on_black(gray_alpha[..., 0], gray_alpha[..., 1], notes)
    if mode == "RGBA":
        rgba = np.asarray(image)
        return _composite_on_black(_colour_to_gray(rgba[..., :3], notes), rgba[..., 3] / np.float32(255.0), notes)
    if mode in ("RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode == "CMYK":
            notes.append("CMYK image converted to RGB, then to grayscale")
        return _colour_to_gray(np.asarray(image.convert("RGB")), notes)
    raise UnsupportedImageError(f"unsupported image mode {mode!r}: save it as 8- or 16-bit grayscale or RGB")


def _palette_gray01(image: Image.Image, notes: list[str]) -> np.ndarray:
    """Index -> luminance of its palette entry, via a 256-entry table (4x faster than converting to RGB)."""
    palette = np.asarray(image.getpalette("RGB") or [], dtype=np.float32).reshape(-1, 3)[:256]
    if palette.size and float(np.ptp(palette, axis=1).max()) > _COLOUR_NOTE_THRESHOLD * 255:
        notes.append("colour image shown as grayscale (luminance)")
    table = np.zeros(256, dtype=np.float32)
    table[: len(palette)] = (palette @ _LUMA) * np.float32(1.0 / 255.0)
    return np.take(table, np.asarray(image))


def _integer_gray01(values: np.ndarray, notes: list[str]) -> np.ndarray:
    """16-bit (or 32-bit integer) grayscale. Many 16-bit radiographs hold 12-bit (or 10/14-bit) data and PNG
    rarely says so: scale by the smallest usual bit depth that holds the largest value."""
    low = int(values.min()) if values.size else 0
    top = int(values.max()) if values.size else 0
    if low < 0 or top > 65535:
        return _stretch(values.astype(np.float32), notes)
    bits = next(b for b in _STORED_BIT_DEPTHS if top <= 2 ** b - 1)
    if bits < 16:
        notes.append(f"{values.dtype.itemsize * 8}-bit pixels hold {bits}-bit values: scaled to 0..{2 ** bits - 1}")
    return values.astype(np.float32) * np.float32(1.0 / (2 ** bits - 1))


def _stretch(values: np.ndarray, notes: list[str]) -> np.ndarray:
    """Min..max stretch for data with no natural range (float or signed images)."""
    values = np.nan_to_num(values.astype(np.float32))
    low, high = float(values.min()), float(values.max())
    notes.append(f"no fixed value range: stretched from {low:g}..{high:g} to 0..1")
    if high <= low:
        return np.zeros_like(values)
    return (values - np.float32(low)) * np.float32(1.0 / (high - low))


def _colour_to_gray(rgb: np.ndarray, notes: list[str]) -> np.ndarray:
    """uint8 RGB -> luminance 0..1, noting when the image really had colour (e.g. figures from papers)."""
    sample = rgb[:: max(1, rgb.shape[0] // 256), :: max(1, rgb.shape[1] // 256)].astype(np.int16)
    spread = np.abs(sample - sample[..., :1]).max() if sample.size else 0
    if spread > _COLOUR_NOTE_THRESHOLD * 255:
        notes.append("colour image shown as grayscale (luminance)")
    return luminance(rgb, 255.0)


def _composite_on_black(gray01: np.ndarray, alpha01: np.ndarray, notes: list[str]) -> np.ndarray:
    """Transparent areas become black: a radiograph's background is dark, and black adds no false anatomy."""
    if float(alpha01.min()) < 1.0:
        notes.append("transparent areas shown as black")
    return (gray01 * alpha01).astype(np.float32)


def _decode_error(err: Exception, fmt: str):
    """Pillow/zlib exception while decoding -> TruncatedImageError or CorruptImageError."""
    text = str(err) or type(err).__name__
    if isinstance(err, EOFError) or "truncated" in text.lower():
        return TruncatedImageError("file is truncated: the image data ends early (an interrupted download or copy?)")
    return CorruptImageError(f"the {fmt} image data is damaged ({text})")
