"""The MLflow pyfunc model: p(fake) for a batch of images of any batch size.

It rebuilds the timm detector from the logged state dict (no pickled model code, no
torch.export input shape baked in). Accepted inputs:

* a numpy array of images in [0, 1] (float) or 0-255 (integers), shaped (N, 3, H, W)
  or (N, H, W, 3), any H, W (resized to the training size); NaN or infinite values are
  refused;
* a pandas DataFrame with an `image` column of base64-encoded image files (PNG, JPEG,
  ...), the convenient form for REST clients: `mlflow models serve` passes
  `{"dataframe_records": [{"image": "<base64>"}, ...]}` through unchanged.

The output is a numpy array of p(fake), one per image.

Called through MLflow (`mlflow models serve`, `mlflow.pyfunc.load_model(...).predict`),
a request is also held to RequestLimits (ROBUST_DEEPFAKE_MAX_REQUEST_MB,
ROBUST_DEEPFAKE_MAX_REQUEST_IMAGES), and every refusal is an InvalidImagesError: an
MlflowException, which MLflow's scoring server answers with HTTP 400 and the message
alone (it attaches a stack trace only to other exceptions). Any other failure becomes
a bare HTTP 500; its traceback goes to the server's log, not to the client. A direct
call, `unwrap_python_model().predict(None, array)`, has no size limits and raises the
original errors.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from PIL import Image, ImageOps, UnidentifiedImageError

from robust_deepfake.config import ModelConfig
from robust_deepfake.data.images import to_rgb
from robust_deepfake.model.detector import load_detector

_logger = logging.getLogger(__name__)

MAX_REQUEST_MB_ENV = "ROBUST_DEEPFAKE_MAX_REQUEST_MB"
MAX_REQUEST_IMAGES_ENV = "ROBUST_DEEPFAKE_MAX_REQUEST_IMAGES"
DEFAULT_MAX_REQUEST_MB = 16.0
DEFAULT_MAX_REQUEST_IMAGES = 256
MIB = 2**20


class InvalidImagesError(MlflowException, ValueError):
    """Input the model refuses. An MlflowException with INVALID_PARAMETER_VALUE, so the
    scoring server answers HTTP 400 with this message and no stack trace; a ValueError
    for in-process callers."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


@dataclass(frozen=True)
class RequestLimits:
    """The most one request may carry: `max_bytes` of image data (the base64 text of the
    `image` column, or one byte per value of a pixel array) and `max_images` images."""

    max_bytes: int
    max_images: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RequestLimits:
        environ = os.environ if environ is None else environ
        megabytes = _positive_setting(environ, MAX_REQUEST_MB_ENV, DEFAULT_MAX_REQUEST_MB, float)
        images = _positive_setting(environ, MAX_REQUEST_IMAGES_ENV, DEFAULT_MAX_REQUEST_IMAGES, int)
        return cls(max_bytes=int(megabytes * MIB), max_images=int(images))

    def check_count(self, count: int) -> None:
        if count > self.max_images:
            raise InvalidImagesError(
                f"request too large: {count} images, at most {self.max_images} per request "
                f"({MAX_REQUEST_IMAGES_ENV}); send them in several requests"
            )

    def check_bytes(self, size: int, what: str) -> None:
        if size > self.max_bytes:
            raise InvalidImagesError(
                f"request too large: {size / MIB:.1f} MiB of {what}, at most {self.max_bytes / MIB:g} MiB "
                f"per request ({MAX_REQUEST_MB_ENV}); send fewer or smaller images per request"
            )


def _positive_setting(environ: Mapping[str, str], name: str, default: float, kind: type) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive {'integer' if kind is int else 'number'}, got {raw!r}")
    return value


def _describe(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value.__class__.__name__ == "NAType":
        return "null"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "a list (pixel arrays are not this model's REST input: send the image file, base64-encoded)"
    return f"a value of type {type(value).__name__}"


def _positions(flags: np.ndarray, shown: int = 5) -> str:
    indices = [int(i) for i in np.flatnonzero(flags)]
    listed = ", ".join(map(str, indices[:shown]))
    return listed + (f" and {len(indices) - shown} more" if len(indices) > shown else "")


def images_from_input(model_input: Any, image_size: int, limits: RequestLimits | None = None) -> torch.Tensor:
    """Turn any accepted input into float (N, 3, S, S) in [0, 1]. Input that is not images
    (or, with `limits`, more than they allow) raises InvalidImagesError."""
    if isinstance(model_input, pd.DataFrame):
        return _from_dataframe(model_input, image_size, limits)
    return _from_array(model_input, image_size, limits)


def _from_dataframe(frame: pd.DataFrame, image_size: int, limits: RequestLimits | None) -> torch.Tensor:
    """An `image` column of base64-encoded image files, each decoded, made upright and RGB,
    and resized to the training size (as training reads its images)."""
    if "image" not in frame.columns:
        raise InvalidImagesError(f"expected an 'image' column of base64 image files, got {[str(c) for c in frame.columns]}")
    column = list(frame["image"])
    if limits is not None:
        limits.check_count(len(column))
    for position, encoded in enumerate(column):
        if not isinstance(encoded, (str, bytes)):
            raise InvalidImagesError(
                f"row {position}: expected a base64-encoded image file (a string), got {_describe(encoded)}"
            )
    if limits is not None:
        limits.check_bytes(sum(len(encoded) for encoded in column), "base64 image data")
    if not column:
        return torch.empty((0, 3, image_size, image_size))
    arrays = [_decode_row(position, encoded, image_size) for position, encoded in enumerate(column)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _decode_row(position: int, encoded: str | bytes, image_size: int) -> np.ndarray:
    """One base64 image file as float (S, S, 3) in [0, 1]."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            # Image.open reads the header only: refuse a decompression bomb before
            # decoding it (PIL itself only warns up to twice this many pixels).
            if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
                raise ValueError(f"{image.width}x{image.height} pixels, more than {Image.MAX_IMAGE_PIXELS}")
            image.load()
            upright = ImageOps.exif_transpose(image)  # as data.images.open_rgb (training)
            rgb = to_rgb(upright).resize((image_size, image_size), Image.Resampling.BILINEAR)
    except UnidentifiedImageError:
        raise InvalidImagesError(f"row {position}: not a base64-encoded image (no image format PIL reads)") from None
    except Exception as error:
        raise InvalidImagesError(f"row {position}: not a base64-encoded image ({error})") from None
    return np.asarray(rgb, dtype=np.float32) / 255.0


def _from_array(model_input: Any, image_size: int, limits: RequestLimits | None) -> torch.Tensor:
    """Pixel arrays (N, 3, H, W) or (N, H, W, 3), one image without N: floats in [0, 1] or
    integers 0-255, resized (antialiased bilinear) to the training size."""
    try:
        array = np.asarray(model_input)
    except (TypeError, ValueError) as error:
        raise InvalidImagesError(f"expected an array of images ({error})") from None
    if array.dtype.kind not in "fiu":
        raise InvalidImagesError(f"pixel values must be numbers, got an array of {array.dtype}")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise InvalidImagesError(f"expected images shaped (N, 3, H, W) or (N, H, W, 3), got {array.shape}")
    if array.shape[1] != 3 and array.shape[-1] == 3:
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1] != 3:
        raise InvalidImagesError(f"expected 3 colour channels, got shape {array.shape}")
    if limits is not None:
        limits.check_count(len(array))
        limits.check_bytes(array.size, "pixel values (one byte each)")
    if array.size == 0:
        return torch.empty((len(array), 3, image_size, image_size))
    _check_pixel_values(array)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = tensor.float() / 255.0 if array.dtype.kind in "iu" else tensor.float()
    if tensor.shape[-2:] != (image_size, image_size):
        tensor = torch.nn.functional.interpolate(
            tensor, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
    return tensor.clamp(0.0, 1.0)


def _check_pixel_values(array: np.ndarray) -> None:
    """Floats must be finite, integers (other than uint8) within 0-255; the refusal names the images."""
    per_image = array.reshape(len(array), -1)
    if array.dtype.kind == "f":
        finite = np.isfinite(per_image).all(axis=1)
        if not finite.all():
            raise InvalidImagesError(
                f"image {_positions(~finite)}: pixel values must be finite numbers in [0, 1], found NaN or infinity"
            )
    elif array.dtype != np.uint8:
        in_range = ((per_image >= 0) & (per_image <= 255)).all(axis=1)
        if not in_range.all():
            raise InvalidImagesError(f"image {_positions(~in_range)}: integer pixel values must be 0-255")


class DetectorPyfunc(mlflow.pyfunc.PythonModel):
    """Loads `state_dict` + `detector_config` artifacts; predict() returns p(fake)."""

    limits: RequestLimits | None = None  # read from the environment when the model loads

    def load_context(self, context) -> None:
        self.limits = RequestLimits.from_env()  # a bad value stops `mlflow models serve` at start
        with open(context.artifacts["detector_config"]) as handle:
            self.config = json.load(handle)
        self.model = load_detector(
            context.artifacts["state_dict"], ModelConfig(**self.config["model"]), self.config["split_at"]
        )
        self.image_size = int(self.config["image_size"])

    # `np.ndarray` is one of the hints for which MLflow skips schema inference and input
    # conversion; DataFrames of base64 images are accepted as well (images_from_input).
    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        if context is None:  # a direct call, unwrap_python_model().predict(None, array): no limits
            return self._score(model_input, params, None)
        try:
            return self._score(model_input, params, self.limits or RequestLimits.from_env())
        except MlflowException:
            raise  # InvalidImagesError included: the scoring server sends its message, no trace
        except Exception as error:
            _logger.exception("scoring a request failed")
            raise MlflowException("the model failed to score this request (the server's log has the details)",
                                  error_code=INTERNAL_ERROR) from error

    def _score(self, model_input: Any, params: dict | None, limits: RequestLimits | None) -> np.ndarray:
        images = images_from_input(model_input, self.image_size, limits)
        raw_batch_size = (params or {}).get("batch_size", 256)
        try:
            batch_size = int(raw_batch_size)
        except (TypeError, ValueError):
            batch_size = 0
        if batch_size <= 0:
            raise InvalidImagesError(f"params.batch_size must be a positive integer, got {raw_batch_size!r}")
        if len(images) == 0:
            return np.empty(0, dtype=np.float64)
        scores = [self.model.p_fake(chunk) for chunk in images.split(batch_size)]
        return torch.cat(scores).numpy().astype(np.float64)
