"""MLflow: where runs go, what each training run records, and the model registry.

Default store: `sqlite:///<repo>/mlflow.db` by absolute path (a relative path would
point elsewhere when DVC or Prefect run a stage from another directory), artifacts in
`<repo>/mlartifacts`. `MLFLOW_TRACKING_URI` overrides both (use a tracking server when
several processes write at once, e.g. queued `dvc exp` runs).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robust_deepfake.config import Params, TrackingConfig, flatten
from robust_deepfake.paths import ModelKey, find_repo_root

DEFAULT_DB = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
MLFLOW_BATCH_LIMIT = 900  # log_batch takes at most 1,000 metrics per call
# Every registered version carries the sha256 of its model.pt: the DVC out is found in the
# registry by its content, so no run id needs to live inside the (byte-stable) outs.
WEIGHTS_TAG = "weights_sha256"
PYFUNC_REQUIREMENTS = [
    "torch==2.14.1", "timm==1.0.31", "numpy==2.4.6", "pillow==13.0.0", "pandas==3.1.1", "mlflow==3.17.2",
]


_exported: str | None = None  # MLFLOW_TRACKING_URI as mlflow.set_tracking_uri() exported it for us


def tracking_uri(config: TrackingConfig, root: Path) -> str:
    """The user's MLFLOW_TRACKING_URI, else params' tracking_uri, else the repo's sqlite file.

    mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI itself; a value that configure()
    caused to be exported is ours, not the user's, and is ignored (else the first
    repository configured in a process would capture every later one)."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env is not None and from_env == _exported:
        from_env = None
    return from_env or config.tracking_uri or f"sqlite:///{root / DEFAULT_DB}"


def configure(config: TrackingConfig, root: Path | None = None) -> str:
    """Point the mlflow client at our store (tracking and registry) and return the URI."""
    import logging

    import mlflow

    # Stage logs are captured by DVC/Prefect: no per-file download bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # alembic's migration chatter on first use of a new sqlite store is noise in stage logs
    logging.getLogger("alembic").setLevel(logging.WARNING)
    global _exported
    root = root or find_repo_root()
    uri = tracking_uri(config, root)
    users = os.environ.get("MLFLOW_TRACKING_URI") == uri and uri != _exported
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _exported = None if users else os.environ.get("MLFLOW_TRACKING_URI")
    return uri


def ensure_experiment(name: str, root: Path) -> str:
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (root / ARTIFACT_DIR).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit(root: Path) -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def data_md5(root: Path) -> str:
    from robust_deepfake.data.materialize import DataStateError, read_dvc_file

    try:
        return read_dvc_file(root / "data.dvc").md5 or "unknown"
    except DataStateError:
        return "unknown"


def finite_metrics(values: dict[str, Any]) -> dict[str, float]:
    """Numbers MLflow can store: drops NaN/inf and non-numeric entries."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


@contextlib.contextmanager
def training_run(params: Params, key: ModelKey, root: Path) -> Iterator[Any]:
    """An MLflow run for one training, with the resolved config and provenance tags."""
    import mlflow

    configure(params.tracking, root)
    experiment_id = ensure_experiment(params.tracking.experiment, root)
    tags = {
        "variant": key.variant,
        "seed": str(key.seed),
        "reg_mode": params.reg.mode if key.variant == "reg" else "none",
        "git_commit": git_commit(root),
        "data_md5": data_md5(root),
        "stage": f"train_{key.variant}@{key.seed}",
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train_{key.name}", tags=tags) as run:
        mlflow.log_params({name: json.dumps(value) if isinstance(value, list) else value
                           for name, value in flatten(params).items()})
        yield run


def _output_only_signature():
    """Declare the output (p(fake) per image) but no input schema: inputs are either
    arrays of any image size or DataFrames of base64 files (serving.py), which an input
    schema would reject, and without any signature MLflow warns on every log."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype("float64"), (-1,), "p_fake")]))


def log_and_register_detector(
    weights_path: Path,
    detector_config: dict[str, Any],
    registered_model: str,
    key: ModelKey,
    version_tags: dict[str, str] | None = None,
) -> str:
    """Log the pyfunc model to the active run, register a new version, tag it (variant,
    seed) and point the alias `<variant>-seed<k>` at it. Returns the version number.
    The report moves `@<variant>`, `@champion` and `@challenger`."""
    import mlflow
    from mlflow import MlflowClient

    from robust_deepfake import pyfunc_model

    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "detector_config.json"
        config_path.write_text(json.dumps(detector_config, indent=2))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc_model.__file__,  # models-from-code: no pickled objects
            artifacts={"state_dict": str(weights_path), "detector_config": str(config_path)},
            pip_requirements=PYFUNC_REQUIREMENTS,
            registered_model_name=registered_model,
            signature=_output_only_signature(),
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    tags = {"variant": key.variant, "seed": str(key.seed), WEIGHTS_TAG: weights_sha256(weights_path),
            **(version_tags or {})}
    for name, value in tags.items():
        client.set_model_version_tag(registered_model, version, name, value)
    client.set_registered_model_alias(registered_model, key.name, version)
    return version


def weights_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def version_of_weights(client, name: str, weights_path: Path):
    """The newest registered version of `name` whose weights are `weights_path`'s bytes,
    or None (trained elsewhere, or with tracking off)."""
    import mlflow

    try:
        found = client.search_model_versions(f"name='{name}' and tags.{WEIGHTS_TAG}='{weights_sha256(weights_path)}'")
    except mlflow.exceptions.MlflowException:
        return None
    return max(found, key=lambda v: int(v.version), default=None)


def log_eps_curves(params: Params, root: Path, keys: list[ModelKey], rows: list[dict], prefix: str) -> None:
    """Log overall metrics per eps to each model's training run, so MLflow's charts show
    metric-vs-eps curves next to the training curves. The run is the one that registered
    the version holding the model's weights; `rows` carry `model` (a ModelKey), `attack`,
    `metric`, `value`, `eps`.
    The step is eps in hundredths of a grey level (robustness.eps.to_step: 2/255 -> 200).
    A model whose run is not in this store (e.g. restored from the DVC cache elsewhere)
    gets a new run tagged with its variant and seed."""
    import time

    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from robust_deepfake.robustness.eps import to_step

    configure(params.tracking, root)
    client = MlflowClient()
    now = int(time.time() * 1000)
    from robust_deepfake.paths import TrainOutputs

    for key in keys:
        version = version_of_weights(client, params.tracking.registered_model, TrainOutputs.of(root, key).weights)
        run_id = version.run_id if version is not None else None
        try:
            if run_id is None:
                raise LookupError
            client.get_run(run_id)
        except (LookupError, mlflow.exceptions.MlflowException):  # no id, or not in this store
            experiment_id = ensure_experiment(params.tracking.experiment, root)
            run_id = client.create_run(experiment_id, run_name=f"{prefix}_{key.name}",
                                       tags={"variant": key.variant, "seed": str(key.seed), "stage": prefix}).info.run_id
            client.set_terminated(run_id)
            print(f"note: {key.name}'s training run is not in {mlflow.get_tracking_uri()}; logged to new run {run_id}")
        metrics = [
            Metric(f"{prefix}/{row['attack']}/{row['metric']}", float(row["value"]), now, to_step(row["eps"]))
            for row in rows
            if row["model"] == key and math.isfinite(row["value"])
        ]
        for start in range(0, len(metrics), MLFLOW_BATCH_LIMIT):
            client.log_batch(run_id, metrics=metrics[start : start + MLFLOW_BATCH_LIMIT])


def current_alias_variant(params: Params, root: Path, alias: str) -> str | None:
    """The `variant` tag of the version `alias` points at, or None (no alias yet)."""
    import mlflow
    from mlflow import MlflowClient

    configure(params.tracking, root)
    try:
        version = MlflowClient().get_model_version_by_alias(params.tracking.registered_model, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return version.tags.get("variant")


def _registered_version(client, name: str, root: Path, key: ModelKey) -> str:
    import mlflow

    from robust_deepfake.errors import StageError
    from robust_deepfake.paths import TrainOutputs

    version = version_of_weights(client, name, TrainOutputs.of(root, key).weights)
    if version is None:
        raise StageError(
            f"no version of {name} in {mlflow.get_tracking_uri()} holds {key.name}'s weights "
            f"({TrainOutputs.of(root, key).weights}): they were trained with another tracking store or restored from "
            f"the DVC cache; re-run `dvc repro -f -s train_{key.variant}@{key.seed}` with this store"
        )
    return str(version.version)


def publish_report(params: Params, root: Path, decision, outputs) -> dict[str, str]:
    """Log the report to a `report` run, then move the aliases: `@<variant>` to each
    variant's representative seed and, when the decision allows it, `@champion` /
    `@challenger`; tag the versions with their variant's seed-mean score."""
    import mlflow
    from mlflow import MlflowClient

    configure(params.tracking, root)
    client = MlflowClient()
    name = params.tracking.registered_model
    versions = {variant: _registered_version(client, name, root, key)
                for variant, key in decision.representatives.items()}
    experiment_id = ensure_experiment(params.tracking.experiment, root)
    with mlflow.start_run(experiment_id=experiment_id, run_name="report",
                          tags={"stage": "report", "champion": decision.champion.name, "git_commit": git_commit(root)}):
        mlflow.log_params({"select_by": params.report.select_by, "seeds": json.dumps(params.train.seeds),
                           "champion": decision.champion.name, "move_champion": decision.move_champion})
        mlflow.log_metrics({f"score_{variant}": value for variant, value in decision.variant_scores.items()})
        for path in (outputs.html, outputs.markdown, outputs.verdict):
            mlflow.log_artifact(str(path))
        mlflow.log_artifacts(str(outputs.figures), artifact_path="figures")
    for variant, version in versions.items():
        client.set_registered_model_alias(name, variant, version)
        client.set_model_version_tag(name, version, f"robustness_{params.report.select_by}_seed_mean",
                                     f"{decision.variant_scores[variant]:.6f}")
    if decision.move_champion:
        client.set_registered_model_alias(name, "champion", versions[decision.champion.variant])
        client.set_registered_model_alias(name, "challenger", versions[decision.challenger.variant])
    return {"champion_version": versions[decision.champion.variant],
            "challenger_version": versions[decision.challenger.variant]}
