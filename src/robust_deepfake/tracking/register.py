"""Registering a trained detector: the pyfunc model (code, signature, input example,
pinned requirements), its model card, version tags and per-seed alias.

The pyfunc model is logged from code (`robust_deepfake/pyfunc_model.py`, MLflow's
models-from-code): MLflow copies that file into the version and runs it when the version
is loaded. It is found by its module spec, not imported: the serving code belongs to
whoever loads a version, not to the training that registers it.
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from robust_deepfake.data.images import open_rgb
from robust_deepfake.paths import ModelKey, find_repo_root
from robust_deepfake.tracking.model_card import REGISTERED_MODEL_DESCRIPTION
from robust_deepfake.tracking.provenance import run_origin
from robust_deepfake.tracking.registry import WEIGHTS_TAG, weights_sha256

PYFUNC_MODULE = "robust_deepfake.pyfunc_model"
# What a loaded version imports, pinned at the versions this environment runs (a local
# build label such as `+cu121` dropped: `==2.14.1` accepts any build of 2.14.1).
PYFUNC_PACKAGES = ("torch", "timm", "numpy", "pillow", "pandas", "mlflow")
PYFUNC_REQUIREMENTS = [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in PYFUNC_PACKAGES]


def serving_signature():
    """The REST contract of `mlflow models serve`: a column `image` of base64-encoded image
    files (any format PIL reads, any size) in, p(fake) per row out. In-process numpy
    arrays go through `unwrap_python_model().predict(None, array)` (inference/pyfunc.py),
    which an input schema cannot describe alongside the DataFrame form."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([ColSpec("string", "image")]),
                          outputs=Schema([TensorSpec(np.dtype("float64"), (-1,), "p_fake")]))


def input_example(image_path: Path, image_size: int):
    """One real image of the data, re-encoded as a PNG at the training size, as the REST
    payload's DataFrame (what `mlflow models serve` accepts)."""
    import pandas as pd
    from PIL import Image

    image = open_rgb(image_path).resize((image_size, image_size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode("ascii")]})


def log_and_register_detector(
    weights_path: Path,
    detector_config: dict[str, Any],
    registered_model: str,
    key: ModelKey,
    version_tags: dict[str, str] | None = None,
    example_image: Path | None = None,
    card: str = "",
    root: Path | None = None,
) -> str:
    """Log the pyfunc model (signature and input example) to the active run, register a
    new version with its model card as description, tag it (variant, seed, weights sha256,
    origin) and, for a run of committed inputs outside `dvc exp`, point the alias
    `<variant>-seed<k>` at it. Returns the version number. The report moves `@<variant>`,
    `@champion` and `@challenger`."""
    import mlflow
    from mlflow import MlflowClient

    origin = run_origin(root or find_repo_root())
    example = input_example(example_image, int(detector_config["image_size"])) if example_image else None
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "detector_config.json"
        config_path.write_text(json.dumps(detector_config, indent=2))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=importlib.util.find_spec(PYFUNC_MODULE).origin,  # models-from-code: no pickled objects
            artifacts={"state_dict": str(weights_path), "detector_config": str(config_path)},
            pip_requirements=PYFUNC_REQUIREMENTS,
            registered_model_name=registered_model,
            signature=serving_signature(),
            input_example=example,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    if not client.get_registered_model(registered_model).description:
        client.update_registered_model(registered_model, description=REGISTERED_MODEL_DESCRIPTION)
    if card:
        client.update_model_version(registered_model, version, description=card)
    tags = {"variant": key.variant, "seed": str(key.seed), WEIGHTS_TAG: weights_sha256(weights_path),
            **origin.tags(), **(version_tags or {})}
    for name, value in tags.items():
        client.set_model_version_tag(registered_model, version, name, value)
    if origin.may_move_aliases:
        client.set_registered_model_alias(registered_model, key.name, version)
    else:
        print(f"note: version {version} of {registered_model} registered without alias @{key.name}: "
              f"{origin.why_aliases_stay()}")
    return version

