"""Every failure to read an image is a RadiographError with a message a person can act on."""

from __future__ import annotations


class RadiographError(Exception):
    """Base class: `str(err)` is shown as-is in the GUI and CLI, so it must read well on its own."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:  # the message only; the path is shown beside it by callers
        return self.message


class FileAccessError(RadiographError):
    """Missing file, directory, broken symlink, no read permission."""


class EmptyFileError(RadiographError):
    """Zero-byte file."""


class NotAnImageError(RadiographError):
    """Text, HTML, zip, ... whatever the extension says."""


class TruncatedImageError(RadiographError):
    """The file ends before the image data does."""


class CorruptImageError(RadiographError):
    """A known image format whose data is damaged (bad checksum, broken header)."""


class ImageTooLargeError(RadiographError):
    """Above the pixel limit (decompression-bomb guard)."""


class UnsupportedImageError(RadiographError):
    """A real image we cannot turn into a radiograph (e.g. 3-D volume, missing decoder)."""


class DicomError(RadiographError):
    """DICOM-specific: no pixel data, unsupported transfer syntax without a decoder, bad header."""
