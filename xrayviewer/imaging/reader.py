"""read_radiograph: any real radiograph file -> Radiograph, or a RadiographError a person can act on."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator

import numpy as np

from xrayviewer.imaging.dicom import read_dicom
from xrayviewer.imaging.errors import (
    EmptyFileError,
    FileAccessError,
    ImageTooLargeError,
    NotAnImageError,
    RadiographError,
)
from xrayviewer.imaging.radiograph import Radiograph
from xrayviewer.imaging.raster import read_raster
from xrayviewer.imaging.sniff import HEAD_BYTES, describe_non_image, sniff_format

DEFAULT_MAX_PIXELS = 100_000_000


def read_radiograph(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Radiograph:
    """Read PNG/JPEG/BMP/TIFF/DICOM into display-ready 0..1 grayscale (higher = brighter).

    Never raises anything but RadiographError (subclasses for the expected problems; the base class wraps
    anything unexpected with its original text). `max_pixels` is checked from the header before decoding; for
    raster files Pillow's own guard (2 x Image.MAX_IMAGE_PIXELS, about 179 MP) still applies above it.
    """
    path_text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
    try:
        pixels, meta = _read(path_text, max_pixels)
        return Radiograph(_finish(pixels), meta, path_text)
    except RadiographError as err:
        err.path = err.path or path_text
        raise
    except MemoryError as err:
        raise ImageTooLargeError("not enough memory to decode this image", path_text) from err
    except Exception as err:  # the promise: no other exception escapes
        raise RadiographError(f"could not read the image ({type(err).__name__}: {err})", path_text) from err


def _read(path: str, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    with open_regular_file(path) as (fileobj, size):
        file_format = sniff_image_format(fileobj.read(HEAD_BYTES), path)
        fileobj.seek(0)
        if file_format == "DICOM":
            pixels, meta = read_dicom(fileobj, max_pixels)
        else:
            pixels, meta = read_raster(fileobj, file_format, max_pixels)
    meta["file_size"] = size
    meta.setdefault("notes", [])
    return pixels, meta


def sniff_image_format(head: bytes, path: str | os.PathLike) -> str:
    """The format the file's first bytes show ('PNG', 'DICOM', ...), or NotAnImageError saying what it looks like."""
    file_format = sniff_format(head)
    if file_format is None:
        raise NotAnImageError(f"not an image: the file looks like {describe_non_image(head)}{_ext_hint(path)}")
    return file_format


@contextmanager
def open_regular_file(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, int]]:
    """(binary file, size) of a non-empty regular file, or a FileAccessError/EmptyFileError.

    Checks the type before opening: opening a FIFO would block forever, and a folder cannot be read.
    """
    info = _stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise FileAccessError("is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise FileAccessError("not a regular file (a device, pipe or socket)")
    if info.st_size == 0:
        raise EmptyFileError("file is empty (0 bytes): an interrupted copy or download?")
    try:
        fileobj = open(path, "rb")
    except PermissionError as err:
        raise FileAccessError("permission denied: you are not allowed to read this file") from err
    except OSError as err:
        raise FileAccessError(f"cannot open the file: {err.strerror or err}") from err
    with fileobj:
        yield fileobj, info.st_size


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError as err:
        if os.path.islink(path):
            raise FileAccessError("file not found: it is a link to a file that no longer exists (broken link)") from err
        raise FileAccessError("file not found (moved, renamed or deleted?)") from err
    except PermissionError as err:
        raise FileAccessError("permission denied: the folder holding this file cannot be read") from err
    except OSError as err:
        raise FileAccessError(f"cannot open the file: {err.strerror or err}") from err


def _ext_hint(path: str | os.PathLike) -> str:
    ext = os.path.splitext(path)[1]
    return f" (despite its {ext} extension)" if ext else ""


def _finish(pixels: np.ndarray) -> np.ndarray:
    """The Radiograph invariant: float32, 2-D, 0..1, finite, C-contiguous."""
    out = np.array(pixels, dtype=np.float32, order="C", copy=None)  # the decoders hand over fresh arrays
    if not out.flags.writeable:
        out = out.copy()
    if out.ndim != 2:
        raise RadiographError(f"decoded image has shape {out.shape}, expected 2-D")
    if not np.isfinite(out.sum(dtype=np.float64)):   # rare: nan_to_num's masks cost 5 bytes a pixel
        np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0, out=out)
