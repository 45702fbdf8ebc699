"""The import path of the pyfunc model that registered versions load: the pyfunc_model.py
logged with every version imports `DetectorPyfunc` from here. The code is in
inference/pyfunc.py."""

from robust_deepfake.inference.pyfunc import (
    DEFAULT_MAX_REQUEST_IMAGES,
    DEFAULT_MAX_REQUEST_MB,
    MAX_REQUEST_IMAGES_ENV,
    MAX_REQUEST_MB_ENV,
    DetectorPyfunc,
    InvalidImagesError,
    RequestLimits,
    images_from_input,
)

__all__ = [
    "DEFAULT_MAX_REQUEST_IMAGES", "DEFAULT_MAX_REQUEST_MB", "MAX_REQUEST_IMAGES_ENV", "MAX_REQUEST_MB_ENV",
    "DetectorPyfunc", "InvalidImagesError", "RequestLimits", "images_from_input",
]
