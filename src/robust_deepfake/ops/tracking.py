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
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robust_deepfake.config import Params, TrackingConfig, flatten
from robust_deepfake.paths import ModelKey, TrainOutputs, find_repo_root

EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
FLOOR_TAG = "quality_floor"  # `passed: …` / `failed: …`, written by the report (verdict.QualityFloor)
# Metric-vs-eps curves on training runs: <prefix>/<attack>/<metric>, step = eps x 255. The
# unit is in the name because MLflow's x-axis can only say "Step".
SWEEP_PREFIX = "attack_vs_eps255"
CAM_PREFIX = "cam_vs_eps255"
EPS_STEP_NOTE = "metrics named */<attack>/<metric> under the *_vs_eps255 prefixes: step = eps x 255 (grey levels)"
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
    return from_env or config.tracking_uri or f"sqlite:///{store_root(root) / DEFAULT_DB}"


def store_root(root: Path) -> Path:
    """The repository whose sqlite store a run uses: `dvc exp run --temp` and queued
    experiments run in a copy under <repo>/.dvc/tmp/exps/, which DVC deletes afterwards,
    so their runs and versions go to <repo>'s store, where `mlflow ui` shows them."""
    parts = Path(root).resolve().parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return Path(root)


def configure(config: TrackingConfig, root: Path | None = None) -> str:
    """Point the mlflow client at our store (tracking and registry) and return the URI."""
    import logging

    import mlflow

    # Stage logs are captured by DVC/Prefect: no per-file download bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # alembic's migration chatter on first use of a new sqlite store is noise in stage logs
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # it logs a failed SQL statement in full before raising; stage_kit reports the error in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    global _exported
    root = root or find_repo_root()
    uri = tracking_uri(config, root)
    users = os.environ.get("MLFLOW_TRACKING_URI") == uri and uri != _exported
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _exported = None if users else os.environ.get("MLFLOW_TRACKING_URI")
    return uri


# MLflow retries an unreachable server 7 times with exponential backoff and a 120 s
# timeout (minutes of silence); ours answer within seconds. MLflow's own variables, so a
# user who sets them wins.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def require_store(config: TrackingConfig, root: Path, write: bool = True) -> str:
    """Configure MLflow and prove the store usable before any work: an HTTP tracking server
    must answer its /health endpoint (bounded by MLFLOW_HTTP_REQUEST_TIMEOUT, default 5 s
    here), a sqlite store must be writable (with `write`). A one-line StageError otherwise, so a stage
    fails in seconds instead of after its training."""
    from robust_deepfake.errors import StageError

    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    uri = configure(config, root)
    if uri.startswith(("http://", "https://")):
        import requests

        timeout = float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"])
        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=(min(timeout, 5.0), timeout))
        except requests.RequestException as error:
            raise StageError(
                f"MLflow tracking server at {uri} unreachable ({type(error).__name__}): start it "
                "(`mlflow server --host 127.0.0.1 ...`), or unset MLFLOW_TRACKING_URI / tracking.tracking_uri "
                "to use the repository's sqlite store"
            ) from None
        if response.status_code >= 500:
            raise StageError(f"MLflow tracking server at {uri} answers HTTP {response.status_code} on /health")
    elif write and uri.startswith("sqlite:///") and not uri.startswith("sqlite:///file:"):  # not sqlite's URI form
        database = Path(uri.removeprefix("sqlite:///"))
        folder = database.parent
        if not folder.is_dir():
            raise StageError(f"{database}: its folder does not exist (tracking URI {uri})")
        if (database.exists() and not os.access(database, os.W_OK)) or not os.access(folder, os.W_OK):
            raise StageError(f"{database}: the MLflow store is read-only for this user (tracking URI {uri}); "
                             "fix its permissions or point MLFLOW_TRACKING_URI at a writable store")
    return uri


def ensure_experiment(name: str, root: Path) -> str:
    """The experiment's id, created on first use, marked as classical model development so
    `mlflow ui` opens it on its runs (not on the GenAI traces view)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if mlflow.get_tracking_uri().startswith("sqlite:"):
            location = (store_root(root) / ARTIFACT_DIR).as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    else:
        experiment_id = experiment.experiment_id
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment_id


def git_commit(root: Path) -> str:
    """HEAD, with `-dirty` when the run's inputs have uncommitted changes (ops/provenance.py)."""
    from robust_deepfake.ops.provenance import run_origin

    return run_origin(root).git_commit


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


EPS_PARAMS = {"attack.eps", "attack.step_size", "cam.eps", "report.reference_eps"}  # logged as k/255 labels


def loggable_params(params: Params) -> dict[str, Any]:
    """Flattened params as MLflow shows them: lists as JSON, attack budgets as `k/255`."""
    from robust_deepfake.units import label

    out: dict[str, Any] = {}
    for name, value in flatten(params).items():
        if name in EPS_PARAMS and value is not None:
            value = [label(v) for v in value] if isinstance(value, list) else label(value)
        out[name] = json.dumps(value) if isinstance(value, list) else value
    return out


def close_killed_run(marker: Path) -> str | None:
    """A training killed mid-run leaves its MLflow run RUNNING and its id in `marker`
    (next to the resume checkpoint): mark it KILLED. Returns its id (or None)."""
    import mlflow
    from mlflow import MlflowClient

    try:
        run_id = json.loads(marker.read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None
    client = MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
    except mlflow.exceptions.MlflowException:
        return None  # another store, or deleted
    return run_id


@contextlib.contextmanager
def training_run(params: Params, key: ModelKey, root: Path) -> Iterator[Any]:
    """An MLflow run for one training: the resolved config (as params and as
    `config/params.json`), the data it read (`log_input`, digest = data.dvc's md5) and
    provenance tags (commit, DVC experiment)."""
    import mlflow

    from robust_deepfake.ops.provenance import run_origin

    configure(params.tracking, root)
    experiment_id = ensure_experiment(params.tracking.experiment, root)
    tags = {
        "variant": key.variant,
        "seed": str(key.seed),
        "reg_mode": params.reg.mode if key.variant == "reg" else "none",
        **run_origin(root).tags(),
        "data_md5": data_md5(root),
        "stage": f"train_{key.variant}@{key.seed}",
        "eps_step": EPS_STEP_NOTE,
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train_{key.name}", tags=tags) as run:
        mlflow.log_params(loggable_params(params))
        mlflow.log_dict(params.model_dump(mode="json"), "config/params.json")
        mlflow.log_input(raw_data_dataset(params, root), context="training")
        yield run


def raw_data_dataset(params: Params, root: Path):
    """The tracked raw data as an MLflow dataset: its digest is data.dvc's md5, so the run
    names exactly the bytes `dvc checkout` restores."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    raw = root / params.data.raw_dir
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both readings are the local folder
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(raw))
    return MetaDataset(source, name=params.data.raw_dir, digest=data_md5(root)[:36])


def log_training_artifacts(history_csv: Path, history: list[dict], confusion: dict[str, Any]) -> None:
    """Per-epoch CSV, its curves and the validation confusion matrix on the active run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_artifact(str(history_csv), artifact_path="training")
    columns = [c for c in ("train_loss", "val_loss", "val_auc", "val_accuracy") if c in history[0]]
    figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 2.8))
    for axis, column in zip(list(axes) if len(columns) > 1 else [axes], columns, strict=True):
        axis.plot([r["epoch"] + 1 for r in history], [r[column] for r in history], marker="o")
        axis.set_xlabel("epoch")
        axis.set_title(column)
    figure.tight_layout()
    mlflow.log_figure(figure, "training/curves.png")
    plt.close(figure)
    mlflow.log_dict(confusion, "training/val_confusion.json")
    figure, axis = plt.subplots(figsize=(3.4, 3.0))
    matrix = confusion["matrix"]
    axis.imshow(matrix, cmap="Blues")
    for i in range(2):
        for j in range(2):
            axis.text(j, i, str(matrix[i][j]), ha="center", va="center")
    axis.set_xticks([0, 1], ["real", "fake"])
    axis.set_yticks([0, 1], ["real", "fake"])
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"validation, threshold {confusion['threshold']:g}")
    figure.tight_layout()
    mlflow.log_figure(figure, "training/val_confusion.png")
    plt.close(figure)


def serving_signature():
    """The REST contract of `mlflow models serve`: a column `image` of base64-encoded image
    files (any format PIL reads, any size) in, p(fake) per row out. In-process numpy
    arrays go through `unwrap_python_model().predict(None, array)` (serving.py), which
    an input schema cannot describe alongside the DataFrame form."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([ColSpec("string", "image")]),
                          outputs=Schema([TensorSpec(np.dtype("float64"), (-1,), "p_fake")]))


def input_example(image_path: Path, image_size: int):
    """One real image of the data, re-encoded as a PNG at the training size, as the REST
    payload's DataFrame (what `mlflow models serve` accepts)."""
    import base64
    import io

    import pandas as pd
    from PIL import Image

    from robust_deepfake.data.images import open_rgb

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

    from robust_deepfake import pyfunc_model
    from robust_deepfake.ops.provenance import run_origin

    origin = run_origin(root or find_repo_root())
    example = input_example(example_image, int(detector_config["image_size"])) if example_image else None
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "detector_config.json"
        config_path.write_text(json.dumps(detector_config, indent=2))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc_model.__file__,  # models-from-code: no pickled objects
            artifacts={"state_dict": str(weights_path), "detector_config": str(config_path)},
            pip_requirements=PYFUNC_REQUIREMENTS,
            registered_model_name=registered_model,
            signature=serving_signature(),
            input_example=example,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    if not client.get_registered_model(registered_model).description:
        from robust_deepfake.ops.model_card import REGISTERED_MODEL_DESCRIPTION

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
    The step is eps in grey levels (units.to_step: 2/255 -> 2), which the prefix
    says (`attack_vs_eps255/pgd/accuracy`: x = eps x 255).
    A model whose run is not in this store (e.g. restored from the DVC cache elsewhere)
    gets a new run tagged with its variant and seed."""
    import time

    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from robust_deepfake.units import to_step

    configure(params.tracking, root)
    client = MlflowClient()
    now = int(time.time() * 1000)
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

    version = version_of_weights(client, name, TrainOutputs.of(root, key).weights)
    if version is None:
        raise StageError(
            f"no version of {name} in {mlflow.get_tracking_uri()} holds {key.name}'s weights "
            f"({TrainOutputs.of(root, key).weights}): they were trained with another tracking store or restored from "
            f"the DVC cache; re-run `dvc repro -f -s train_{key.variant}@{key.seed}` with this store"
        )
    return str(version.version)


def publish_report(params: Params, root: Path, decision, outputs, cards: dict[ModelKey, str] | None = None) -> dict:
    """Log the report to a `report` run; tag every model's version with its quality floor
    and append the report's section to its model card; then, for a run of committed
    inputs outside `dvc exp` only, move the aliases: `@<variant>` to each variant's
    representative seed and, when the decision allows it, `@champion` / `@challenger`
    (never onto a model under the floor). Returns the versions and what moved."""
    import mlflow
    from mlflow import MlflowClient

    from robust_deepfake.ops.provenance import run_origin

    configure(params.tracking, root)
    client = MlflowClient()
    origin = run_origin(root)
    name = params.tracking.registered_model
    versions = {variant: _registered_version(client, name, root, key)
                for variant, key in decision.representatives.items()}
    experiment_id = ensure_experiment(params.tracking.experiment, root)
    with mlflow.start_run(experiment_id=experiment_id, run_name="report",
                          tags={"stage": "report", "champion": decision.champion.name, **origin.tags()}):
        mlflow.log_params({"select_by": params.report.select_by, "seeds": json.dumps(params.train.seeds),
                           "min_clean_auc": params.report.min_clean_auc, "champion": decision.champion.name,
                           "move_champion": decision.move_champion})
        mlflow.log_metrics({f"score_{variant}": value for variant, value in decision.variant_scores.items()})
        for path in (outputs.html, outputs.markdown, outputs.verdict, outputs.metrics):
            mlflow.log_artifact(str(path))
        mlflow.log_artifacts(str(outputs.figures), artifact_path="figures")
    for key in decision.floor.clean_auc:
        found = version_of_weights(client, name, TrainOutputs.of(root, key).weights)
        if found is None:
            continue
        client.set_model_version_tag(name, found.version, FLOOR_TAG, decision.floor.describe(key))
        if cards and key in cards:
            card = (found.description or "").split(REPORT_CARD_MARK)[0].rstrip()
            client.update_model_version(name, found.version, description=f"{card}\n\n{REPORT_CARD_MARK}\n{cards[key]}")
    for variant, version in versions.items():
        client.set_model_version_tag(name, version, f"robustness_{params.report.select_by}_seed_mean",
                                     f"{decision.variant_scores[variant]:.6f}")
    moved: list[str] = []
    if origin.may_move_aliases:  # last: after every tag, so no alias points at an untagged version
        for variant, version in versions.items():
            client.set_registered_model_alias(name, variant, version)
            moved.append(variant)
        if decision.move_champion:
            client.set_registered_model_alias(name, "champion", versions[decision.champion.variant])
            moved.append("champion")
        if decision.move_challenger:
            client.set_registered_model_alias(name, "challenger", versions[decision.challenger.variant])
            moved.append("challenger")
    else:
        print(f"note: no alias moved: {origin.why_aliases_stay()}")
    return {"champion_version": versions[decision.champion.variant],
            "challenger_version": versions[decision.challenger.variant], "aliases_moved": moved}


REPORT_CARD_MARK = "<!-- report -->"
