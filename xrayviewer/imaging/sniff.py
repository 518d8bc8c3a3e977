"""Recognise a file's format from its first bytes, without decoding it.

Used by the reader (to route DICOM vs raster, and to say what a non-image *is*) and by folder scanning
(DICOM files often have no extension, or a UID as their name, and a header check is far cheaper than a decode).
"""

from __future__ import annotations

import errno
import os
import stat
import struct

HEAD_BYTES = 4096  # enough for every signature below, including DICOM's 128-byte preamble

# Raster signatures Pillow decodes; the name is what meta["format"] will say.
_RASTER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)

# Well-known non-images, so the message can say what the file looks like.
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "a program (ELF executable)"),
    (b"MZ", "a Windows program"),
    (b"{\\rtf", "an RTF document"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office document"),
)

# DICOM group numbers a file without the 128-byte preamble plausibly starts with.
_DICOM_FIRST_GROUPS = {0x0002, 0x0008}


def read_head(path: str | os.PathLike, n: int = HEAD_BYTES) -> bytes:
    """First `n` bytes of a regular file (OSError propagates: callers turn it into their own message).

    Anything else (FIFO, device, socket) raises OSError instead of being opened: reading a FIFO blocks forever.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with open(path, "rb") as f:
        return f.read(n)


def is_dicom_head(head: bytes) -> bool:
    """'DICM' after the preamble, or a bare data set (no preamble) starting with a plausible group 0002/0008 tag."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in _DICOM_FIRST_GROUPS or element > 0x0100:
        return False
    vr = head[4:6]
    explicit_vr = vr.isalpha() and vr.isupper()
    implicit_length = struct.unpack("<I", head[4:8])[0]
    return explicit_vr or implicit_length < 1024


def sniff_format(head: bytes) -> str | None:
    """'DICOM', 'PNG', 'JPEG', 'BMP', 'TIFF', 'GIF' — or None when the bytes are not an image we know."""
    for magic, name in _RASTER_MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if is_dicom_head(head):
        return "DICOM"
    return None


def describe_non_image(head: bytes) -> str:
    """What a non-image file looks like, for the message: 'an HTML page', 'a zip archive', 'text', ..."""
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            return what
    text = _as_text(head)
    if text is None:
        return "unknown binary data"
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if lowered.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in lowered[:512]:
        return "an HTML page (a web page saved instead of the image?)"
    if lowered.startswith("<?xml") or lowered.startswith("<svg"):
        return "an XML/SVG document"
    if lowered.startswith(("{", "[")):
        return "JSON text"
    if lowered.startswith("version https://git-lfs"):
        return "a Git LFS pointer (the real file was never downloaded)"
    return "text"


def _as_text(head: bytes) -> str | None:
    """The head decoded as text if it is mostly printable UTF-8, else None."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # a multi-byte char cut at the end of the head is fine
            return None
        text = head[: err.start].decode("utf-8")
    if not text:
        return None
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return text if printable / len(text) > 0.95 else None
