"""Reading radiographs (any real format) and display transforms. Imports no Qt and no TensorFlow."""

from xrayviewer.imaging.errors import (  # noqa: F401
    DicomError,
    EmptyFileError,
    FileAccessError,
    ImageTooLargeError,
    NotAnImageError,
    RadiographError,
    TruncatedImageError,
    UnsupportedImageError,
)
from xrayviewer.imaging.preprocess import PREPROCESSING_ID, to_model_batch, to_model_input  # noqa: F401
from xrayviewer.imaging.radiograph import Radiograph  # noqa: F401

# Filled in by reader.py / scan.py (issue 2); imported lazily so a partial tree still imports.
try:  # pragma: no cover - removed once reader.py exists
    from xrayviewer.imaging.reader import read_radiograph  # noqa: F401
    from xrayviewer.imaging.scan import Dataset, discover_dataset, iter_radiographs  # noqa: F401
except ImportError:  # pragma: no cover
    pass
