"""What the served model refuses, without a server: non-finite or out-of-range pixels,
rows that are not image files, requests over RequestLimits, and how each refusal reaches
MLflow's scoring server (an MlflowException: HTTP 400, the message, no stack trace).
tests/test_serving.py checks the same through a real `mlflow models serve`."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

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

SIZE = 8


def png_b64(width: int = 12, height: int = 10, seed: int = 0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def refusal(call, *args, **kwargs) -> InvalidImagesError:
    with pytest.raises(InvalidImagesError) as caught:
        call(*args, **kwargs)
    return caught.value


def assert_served_as_400_without_trace(error: InvalidImagesError) -> dict:
    """What MLflow's scoring server does with it (_async_catch_mlflow_exception)."""
    assert isinstance(error, ValueError) and isinstance(error, MlflowException)
    assert error.get_http_status_code() == 400
    body = json.loads(error.serialize_as_json())
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "stack_trace" not in body
    return body


def test_limits_come_from_the_environment():
    default = RequestLimits.from_env({})
    assert default == RequestLimits(max_bytes=int(DEFAULT_MAX_REQUEST_MB * 2**20), max_images=DEFAULT_MAX_REQUEST_IMAGES)
    assert RequestLimits.from_env({MAX_REQUEST_MB_ENV: " ", MAX_REQUEST_IMAGES_ENV: ""}) == default
    assert RequestLimits.from_env({MAX_REQUEST_MB_ENV: "0.5", MAX_REQUEST_IMAGES_ENV: "3"}) == RequestLimits(2**19, 3)
    for name, value in [(MAX_REQUEST_MB_ENV, "0"), (MAX_REQUEST_MB_ENV, "-1"), (MAX_REQUEST_MB_ENV, "inf"),
                        (MAX_REQUEST_MB_ENV, "nan"), (MAX_REQUEST_MB_ENV, "16MB"), (MAX_REQUEST_IMAGES_ENV, "2.5"),
                        (MAX_REQUEST_IMAGES_ENV, "0")]:
        with pytest.raises(ValueError, match=name):
            RequestLimits.from_env({name: value})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_non_finite_pixels_are_refused(bad, layout):
    batch = np.full((3, 3, 5, 5), 0.5, dtype=np.float32)
    batch[2, 1, 0, 4] = bad
    if layout == "nhwc":
        batch = batch.transpose(0, 2, 3, 1)
    error = refusal(images_from_input, batch, SIZE)
    assert "image 2: pixel values must be finite numbers" in error.message
    assert_served_as_400_without_trace(error)
    # a single image (H, W, 3) and float64, as MLflow parses JSON
    assert "image 0:" in refusal(images_from_input, batch[2].astype(np.float64), SIZE).message


def test_integer_pixels_are_0_to_255_whatever_their_dtype():
    """JSON integers reach the model as int64: they mean 0-255, as uint8 does."""
    batch = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3))
    expected = images_from_input(batch.astype(np.uint8), SIZE)
    assert torch.equal(images_from_input(batch, SIZE), expected)
    assert torch.equal(images_from_input(batch.astype(np.float32) / 255, SIZE), expected)
    for value in (-1, 256):
        batch[1, 0, 0, 0] = value
        assert "image 1: integer pixel values must be 0-255" in refusal(images_from_input, batch, SIZE).message


@pytest.mark.parametrize("value", [np.array([[["a", "b", "c"]]]), [[[0.5, 0.5, 0.5]], [[0.5, 0.5]]], np.ones((2, 2, 2, 3), bool)])
def test_arrays_that_are_not_pixel_numbers_are_refused(value):
    error = refusal(images_from_input, value, SIZE)
    assert error.message.startswith(("pixel values must be numbers", "expected an array of images"))


def test_rows_must_be_base64_image_files():
    good = png_b64()
    frame = pd.DataFrame({"image": [good, good]})
    assert images_from_input(frame, SIZE).shape == (2, 3, SIZE, SIZE)
    cases = [
        (5, "row 1: expected a base64-encoded image file (a string), got a value of type int"),
        (None, "row 1: expected a base64-encoded image file (a string), got null"),
        ([[0.5, 0.5, 0.5]], "row 1: expected a base64-encoded image file (a string), got a list"),
        ("bm90IGFuIGltYWdl", "row 1: not a base64-encoded image (no image format PIL reads)"),
        ("%%%", "row 1: not a base64-encoded image"),
    ]
    for value, expected in cases:
        error = refusal(images_from_input, pd.DataFrame({"image": [good, value]}, dtype=object), SIZE)
        assert error.message.startswith(expected), error.message
        assert_served_as_400_without_trace(error)
    error = refusal(images_from_input, pd.DataFrame({"img": [good]}), SIZE)
    assert error.message == "expected an 'image' column of base64 image files, got ['img']"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns, then we refuse
def test_a_decompression_bomb_is_refused_before_it_is_decoded(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    error = refusal(images_from_input, pd.DataFrame({"image": [png_b64(11, 10)]}), SIZE)
    assert error.message == "row 0: not a base64-encoded image (11x10 pixels, more than 100)"


def test_requests_over_the_limits_are_refused_before_decoding():
    image = png_b64()
    limits = RequestLimits(max_bytes=3 * len(image), max_images=3)
    assert len(images_from_input(pd.DataFrame({"image": [image] * 3}), SIZE, limits)) == 3
    error = refusal(images_from_input, pd.DataFrame({"image": [image] * 4}), SIZE, limits)
    assert error.message.startswith(f"request too large: 4 images, at most 3 per request ({MAX_REQUEST_IMAGES_ENV})")
    assert_served_as_400_without_trace(error)
    # the size is checked on the base64 text, before anything is decoded
    error = refusal(images_from_input, pd.DataFrame({"image": [image, "x" * (2 * len(image) + 1)]}), SIZE, limits)
    assert error.message.startswith("request too large:") and MAX_REQUEST_MB_ENV in error.message
    # pixel arrays: one byte per value, whatever the dtype
    pixels = np.zeros((1, 3, 20, 20), dtype=np.float64)
    assert len(images_from_input(pixels, SIZE, RequestLimits(max_bytes=1200, max_images=1))) == 1
    error = refusal(images_from_input, pixels, SIZE, RequestLimits(max_bytes=1199, max_images=1))
    assert "of pixel values (one byte each)" in error.message
    assert "images, at most 1" in refusal(images_from_input, np.zeros((2, 3, 4, 4)), SIZE,
                                          RequestLimits(max_bytes=10**6, max_images=1)).message
    # without limits (a direct call), nothing is counted
    assert len(images_from_input(pd.DataFrame({"image": [image] * 5}), SIZE)) == 5


class MeanDetector:
    def __init__(self, fail: Exception | None = None):
        self.fail = fail

    def p_fake(self, images: torch.Tensor) -> torch.Tensor:
        if self.fail is not None:
            raise self.fail
        return images.mean(dim=(1, 2, 3))


def pyfunc(detector: MeanDetector, limits: RequestLimits | None) -> DetectorPyfunc:
    model = DetectorPyfunc()
    model.model, model.image_size, model.limits = detector, SIZE, limits
    return model


CONTEXT = SimpleNamespace(artifacts={})  # what MLflow passes; a direct call passes None


def test_limits_apply_to_calls_through_mlflow_not_to_direct_calls():
    model = pyfunc(MeanDetector(), RequestLimits(max_bytes=10**6, max_images=2))
    batch = np.full((3, 3, SIZE, SIZE), 0.25)
    np.testing.assert_allclose(model.predict(None, batch), [0.25] * 3)
    assert "request too large: 3 images" in refusal(model.predict, CONTEXT, batch).message
    np.testing.assert_allclose(model.predict(CONTEXT, batch[:2]), [0.25] * 2)
    assert model.predict(CONTEXT, batch[:0]).shape == (0,)
    assert model.predict(CONTEXT, pd.DataFrame({"image": []}, dtype=object)).shape == (0,)
    # non-finite pixels are refused either way
    batch[0, 0, 0, 0] = np.nan
    assert "finite" in refusal(model.predict, None, batch).message


def test_unexpected_errors_through_mlflow_are_500s_without_details(caplog):
    secret = RuntimeError("CUDA out of memory in /work/main/src/robust_deepfake/model/detector.py")
    model = pyfunc(MeanDetector(fail=secret), RequestLimits.from_env({}))
    batch = np.zeros((1, 3, SIZE, SIZE))
    with pytest.raises(MlflowException) as caught:
        model.predict(CONTEXT, batch)
    assert caught.value.get_http_status_code() == 500
    assert caught.value.__cause__ is secret
    body = caught.value.serialize_as_json()
    assert "stack_trace" not in body and "/work" not in body and "CUDA" not in body
    assert "/work/main/src" in caplog.text  # the operator sees it in the server's log
    with pytest.raises(RuntimeError, match="CUDA out of memory"):  # a direct call: the error itself
        model.predict(None, batch)


def test_batch_size_must_be_a_positive_integer():
    model = pyfunc(MeanDetector(), None)
    batch = np.full((5, 3, SIZE, SIZE), 0.5)
    np.testing.assert_allclose(model.predict(None, batch, params={"batch_size": 2}), [0.5] * 5)
    for bad in (0, -3, "x", None):
        error = refusal(model.predict, CONTEXT, batch, params={"batch_size": bad})
        assert error.message.startswith("params.batch_size must be a positive integer")


def test_registered_versions_import_the_model_from_robust_deepfake_serving():
    """The pyfunc_model.py logged with every registered version imports DetectorPyfunc from
    robust_deepfake.serving: that path keeps naming the model class of inference/pyfunc.py."""
    import importlib.util
    from pathlib import Path

    from robust_deepfake import serving

    logged = Path(importlib.util.find_spec("robust_deepfake.pyfunc_model").origin).read_text()
    assert "from robust_deepfake.serving import DetectorPyfunc" in logged
    assert serving.DetectorPyfunc is DetectorPyfunc
    assert serving.images_from_input is images_from_input
