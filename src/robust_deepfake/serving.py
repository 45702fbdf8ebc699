"""The MLflow pyfunc wrapper: p(fake) for a batch of images of any batch size.

It rebuilds the timm detector from the logged state dict (no pickled model code, no
torch.export input shape baked in). Accepted inputs:

* a numpy array of images in [0, 1] (float) or 0-255 (uint8), shaped (N, 3, H, W) or
  (N, H, W, 3), any H, W (resized to the training size);
* a pandas DataFrame with an `image` column of base64-encoded image files (PNG, JPEG,
  ...), the convenient form for REST clients: `mlflow models serve` passes
  `{"dataframe_records": [{"image": "<base64>"}, ...]}` through unchanged.

The output is a numpy array of p(fake), one per image.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch


def images_from_input(model_input: Any, image_size: int) -> torch.Tensor:
    """Turn any accepted input into float (N, 3, S, S) in [0, 1]."""
    import pandas as pd
    from PIL import Image, ImageOps

    from robust_deepfake.data.images import to_rgb

    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            raise ValueError(f"expected an 'image' column of base64 image files, got {list(model_input.columns)}")
        arrays = []
        for position, encoded in enumerate(model_input["image"]):
            try:
                with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
                    image.load()
                    upright = ImageOps.exif_transpose(image)  # as data.images.open_rgb (training)
                    rgb = to_rgb(upright).resize((image_size, image_size), Image.Resampling.BILINEAR)
            except Exception as error:
                raise ValueError(f"row {position}: not a base64-encoded image ({error})") from None
            arrays.append(np.asarray(rgb, dtype=np.float32) / 255.0)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    array = np.asarray(model_input)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"expected images shaped (N, 3, H, W) or (N, H, W, 3), got {array.shape}")
    if array.shape[1] != 3 and array.shape[-1] == 3:
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    if tensor.shape[-2:] != (image_size, image_size):
        tensor = torch.nn.functional.interpolate(
            tensor, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
    return tensor.clamp(0.0, 1.0)


class DetectorPyfunc(mlflow.pyfunc.PythonModel):
    """Loads `state_dict` + `detector_config` artifacts; predict() returns p(fake)."""

    def load_context(self, context) -> None:
        from robust_deepfake.config import ModelConfig
        from robust_deepfake.model.detector import load_detector

        with open(context.artifacts["detector_config"]) as handle:
            self.config = json.load(handle)
        self.model = load_detector(
            context.artifacts["state_dict"], ModelConfig(**self.config["model"]), self.config["split_at"]
        )
        self.image_size = int(self.config["image_size"])

    # `np.ndarray` is one of the hints for which MLflow skips schema inference and input
    # conversion; DataFrames of base64 images are accepted as well (images_from_input).
    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        images = images_from_input(model_input, self.image_size)
        batch_size = int((params or {}).get("batch_size", 256))
        scores = [self.model.p_fake(chunk) for chunk in images.split(batch_size)]
        return torch.cat(scores).numpy().astype(np.float64)
