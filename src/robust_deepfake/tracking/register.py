"""Registering a trained detector: the pyfunc model (code, signature, input example,
pinned requirements), its model card, version tags and per-seed alias; and the train
stages' tracker, which registers each trained model.

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

from robust_deepfake.config import Params
from robust_deepfake.data.images import open_rgb
from robust_deepfake.paths import ModelKey, TrainOutputs, find_repo_root
from robust_deepfake.tracking.model_card import REGISTERED_MODEL_DESCRIPTION, training_card
from robust_deepfake.tracking.provenance import data_md5, run_origin
from robust_deepfake.tracking.registry import WEIGHTS_TAG, weights_sha256
from robust_deepfake.tracking.runs import (
    close_killed_run,
    epoch_metrics,
    finite_metrics,
    log_batched,
    log_training_artifacts,
    now_ms,
    open_training_run,
    variant_tags,
)
from robust_deepfake.tracking.tracker import MlflowTracker

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


class MlflowTrainingTracker(MlflowTracker):
    """The train stages' tracker (tracker.TrainingTracker): opens one MLflow run per
    training (closing the run a killed training left RUNNING). Every record goes through
    the client API with the run's id, from the one process that holds the store: several
    runs are open at once while a stage trains seeds side by side."""

    def open_training(self, key: ModelKey, marker: Path) -> MlflowTrainingRun:
        run_id = open_training_run(self.params, key, self.root)
        return MlflowTrainingRun(self.params, self.root, key, run_id, _take_over(run_id, marker))


class MlflowTrainingRun:
    """One training's run (tracker.TrainingRun): per-epoch metrics as they come, the
    history and confusion-matrix artifacts, the registered version with its model card."""

    def __init__(self, params: Params, root: Path, key: ModelKey, run_id: str, killed: str | None) -> None:
        from mlflow import MlflowClient

        self.params, self.root, self.key, self.run_id, self.killed = params, root, key, run_id, killed
        self._client = MlflowClient()

    def log_epoch(self, record: dict) -> None:
        from mlflow.entities import Metric

        metrics, step = epoch_metrics(record)
        now = now_ms()
        log_batched(self._client, self.run_id, [Metric(name, value, now, step) for name, value in metrics.items()])

    def log_resumed(self, records: list[dict]) -> None:
        """Also tags the run with the killed run it continues."""
        for record in records:
            self.log_epoch(record)
        if records and self.killed:
            self._client.set_tag(self.run_id, "resumed_from_run", self.killed)

    def log_training(self, history_csv: Path, history: list[dict], confusion: dict) -> None:
        log_training_artifacts(self._client, self.run_id, history_csv, history, confusion)

    def register(self, outputs: TrainOutputs, detector_config: dict, summary: dict, data: dict,
                 example_image: Path) -> dict:
        """The best epoch's metrics (`best/<name>`), then the version (the run ends
        FINISHED); returns the run record's MLflow entries (run, store, model, version, commit)."""
        import mlflow
        from mlflow.entities import Metric

        params, key, now = self.params, self.key, now_ms()
        log_batched(self._client, self.run_id, [
            Metric(k if k in ("best_epoch", "epochs_run") else f"best/{k}", v, now, 0)
            for k, v in finite_metrics(summary).items()])
        origin = run_origin(self.root)
        card = training_card(params, key, summary, {"md5": data_md5(self.root), **data},
                             {**origin.tags(), "mlflow run": self.run_id})
        tags = variant_tags(params, key)
        with mlflow.start_run(run_id=self.run_id):  # the pyfunc model is logged to the active run
            version = log_and_register_detector(
                outputs.weights, detector_config, params.tracking.registered_model, key,
                version_tags={"role": tags["role"], "reg_mode": tags["reg_mode"], "mlflow_run_id": self.run_id},
                example_image=example_image, card=card, root=self.root,
            )
        return {"mlflow_run_id": self.run_id, "tracking_uri": mlflow.get_tracking_uri(),
                "registered_model": params.tracking.registered_model, "registered_version": version,
                "git_commit": origin.git_commit}

    def close(self, status: str) -> None:
        """End the run: FINISHED, FAILED or KILLED (a training stopped because another failed)."""
        self._client.set_terminated(self.run_id, status=status)


def _take_over(run_id: str, marker: Path) -> str | None:
    """Close the run a killed training left RUNNING (status KILLED, tagged with the run
    that resumes it) and record this run's id in `marker`. Returns the killed run's id."""
    from mlflow import MlflowClient

    killed = close_killed_run(marker) if marker.exists() else None
    if killed:
        MlflowClient().set_tag(killed, "resumed_in_run", run_id)
        print(f"note: MLflow run {killed} of the interrupted training is closed (KILLED if it was still RUNNING); continuing in {run_id}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run_id": run_id}))
    return killed
