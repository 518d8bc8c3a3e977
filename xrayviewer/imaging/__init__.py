"""Reading radiographs (any real format) and display transforms. Imports no Qt and no TensorFlow."""

from xrayviewer.imaging.errors import (  # noqa: F401
    CorruptImageError,
    DicomError,
    EmptyFileError,
    FileAccessError,
    ImageTooLargeError,
    NotAnImageError,
    RadiographError,
    TruncatedImageError,
    UnsupportedImageError,
)
from xrayviewer.imaging.hashing import file_sha256  # noqa: F401
from xrayviewer.imaging.preprocess import PREPROCESSING_ID, to_model_batch, to_model_input  # noqa: F401
from xrayviewer.imaging.radiograph import Radiograph  # noqa: F401
from xrayviewer.imaging.reader import read_radiograph  # noqa: F401
from xrayviewer.imaging.scan import (  # noqa: F401
    Dataset,
    DatasetItem,
    DatasetProblem,
    discover_dataset,
    iter_radiographs,
)
