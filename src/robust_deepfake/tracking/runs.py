"""What MLflow runs record: the training run (params, data, provenance, per-epoch
metrics and artifacts), metric-vs-eps curves on it, and the one batched metric logger.

Per-epoch metrics are `Training/<name>` (step = epoch, from 1), the chosen epoch's
`best/<name>`; curves on training runs are named `<prefix>/<attack>/<metric>` with step =
eps x 255 (grey levels): MLflow's x-axis can only say "Step", so the unit is in the prefix.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robust_deepfake.config import Params, flatten
from robust_deepfake.io import finite_number
from robust_deepfake.paths import (
    CANDIDATE_VARIANTS,
    CHECKPOINT_DIR,
    RUN_MARKER,
    VARIANTS,
    ModelKey,
    TrainOutputs,
    resume_checkpoint,
)
from robust_deepfake.tracking.provenance import data_md5, run_origin
from robust_deepfake.tracking.registry import version_of_weights
from robust_deepfake.tracking.store import configure, ensure_experiment
from robust_deepfake.units import label, to_step

EPOCH_PREFIX = "Training"  # capitalised: MLflow sorts chart sections by code point, so these come first
SWEEP_PREFIX = "attack_vs_eps255"
CAM_PREFIX = "cam_vs_eps255"
MASKING_PREFIX = "masking_vs_eps255"  # <prefix>/<check>/<number or warn> at the checks' eps
EPS_STEP_NOTE = "metrics named */<attack>/<metric> under the *_vs_eps255 prefixes: step = eps x 255 (grey levels)"
MLFLOW_BATCH_LIMIT = 900  # log_batch takes at most 1,000 metrics per call
EPS_PARAMS = {"attack.eps", "attack.step_size", "cam.eps", "report.reference_eps"}  # logged as k/255 labels


def now_ms() -> int:
    """A metric timestamp: milliseconds since the epoch, as MLflow stores them."""
    return int(time.time() * 1000)


def log_batched(client, run_id: str, metrics: Sequence[Any], params: Sequence[Any] = (),
                tags: Sequence[Any] = ()) -> None:
    """Log `metrics` (mlflow.entities.Metric) to `run_id` in calls of at most
    MLFLOW_BATCH_LIMIT, `params` and `tags` with the first call; no call when all are empty."""
    calls = max(len(metrics), 1 if params or tags else 0)
    for start in range(0, calls, MLFLOW_BATCH_LIMIT):
        first = start == 0
        client.log_batch(run_id, metrics=list(metrics[start : start + MLFLOW_BATCH_LIMIT]),
                         params=list(params) if first else [], tags=list(tags) if first else [])


def finite_metrics(values: dict[str, Any]) -> dict[str, float]:
    """Numbers MLflow can store (io.finite_number): drops NaN/inf and non-numeric entries."""
    return {key: number for key, value in values.items() if (number := finite_number(value)) is not None}


def epoch_metrics(record: dict[str, Any]) -> tuple[dict[str, float], int]:
    """One epoch's record (`epoch` counted from 0) as MLflow metrics and step: every finite
    number under `Training/` at step = the epoch counted from 1, as best_epoch counts it
    (the epoch itself is the step, not a metric)."""
    metrics = {f"{EPOCH_PREFIX}/{name}": value for name, value in finite_metrics(record).items() if name != "epoch"}
    return metrics, int(record["epoch"]) + 1


def loggable_params(params: Params) -> dict[str, Any]:
    """Flattened params as MLflow shows them: lists as JSON, attack budgets as `k/255`."""
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


def close_dead_trainings(root: Path) -> list[str]:
    """What a killed training leaves behind once its stage's outs are back (restored from
    DVC's run cache, or trained again): its MLflow run still RUNNING, marked KILLED here,
    and its resume checkpoint, removed when the restored outs hold the same training (the
    checkpoint's fingerprint equals meta.json's); a checkpoint of other params stays for
    a resume. A training in progress is never touched: DVC deletes a stage's outs before
    running it, and these are only looked at while its meta.json exists. Returns one note
    per action. Call with MLflow configured (store.configure)."""
    notes = []
    for key in _checkpointed_keys(root):
        meta_path = TrainOutputs.of(root, key).meta
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue  # no outs: the training may be running, or will run and resume
        checkpoint = resume_checkpoint(root, key)
        marker = checkpoint.parent / RUN_MARKER
        killed = _kill_if_running(marker)
        if killed:
            notes.append(f"MLflow run {killed} of a killed training of {key.name} marked KILLED "
                         f"(its outs {meta_path.parent} are in place)")
        if checkpoint.exists() and _checkpoint_fingerprint(checkpoint) == meta.get("fingerprint"):
            size_mb = checkpoint.stat().st_size / 2**20
            checkpoint.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            notes.append(f"removed {checkpoint} ({size_mb:.0f} MB): the resume state of a killed training whose "
                         f"result {meta_path.parent} already holds")
    return notes


def _checkpointed_keys(root: Path) -> list[ModelKey]:
    found = []
    for folder in sorted((Path(root) / CHECKPOINT_DIR).glob("*/seed*")):
        variant, seed = folder.parent.name, folder.name.removeprefix("seed")
        if variant in VARIANTS and seed.isdigit():
            found.append(ModelKey(variant, int(seed)))
    return found


def _kill_if_running(marker: Path) -> str | None:
    """Mark the run `marker` names KILLED when it is still RUNNING; its id if so."""
    import mlflow
    from mlflow import MlflowClient

    try:
        run_id = json.loads(marker.read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    client = MlflowClient()
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return None
        client.set_terminated(run_id, status="KILLED")
        client.set_tag(run_id, "killed_noticed_by", "a later stage: its outs were restored from the DVC cache")
    except mlflow.exceptions.MlflowException:
        return None  # another store, or deleted
    return run_id


def _checkpoint_fingerprint(path: Path) -> str | None:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("fingerprint")
    except Exception:  # noqa: BLE001 - unreadable resume state: not provably stale, keep it
        return None


def variant_tags(params: Params, key: ModelKey) -> dict[str, str]:
    """What a training's run and registered version say about the model: variant, seed,
    role (`candidate` for @champion / @challenger, or `control`) and regularizer mode."""
    return {"variant": key.variant, "seed": str(key.seed),
            "role": "candidate" if key.variant in CANDIDATE_VARIANTS else "control",
            "reg_mode": "none" if key.variant == "baseline" else params.reg.mode}  # the placebo keeps reg's mode


def open_training_run(params: Params, key: ModelKey, root: Path) -> str:
    """A new RUNNING MLflow run for one training, by the client API (several are open at
    once in a stage that trains seeds side by side): the resolved config (as params and as
    `config/params.json`), the data it read (digest = data.dvc's md5) and provenance tags
    (commit, DVC experiment). Returns its id; `close_run` ends it."""
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, InputTag, Param
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    configure(params.tracking, root)
    experiment_id = ensure_experiment(params.tracking.experiment, root)
    tags = {
        **variant_tags(params, key),
        **run_origin(root).tags(),
        "data_md5": data_md5(root),
        "stage": f"train_{key.variant}",
        "eps_step": EPS_STEP_NOTE,
    }
    client = MlflowClient()
    run_id = client.create_run(experiment_id, run_name=f"train_{key.name}", tags=tags).info.run_id
    log_batched(client, run_id, [], params=[Param(k, str(v)) for k, v in loggable_params(params).items()])
    client.log_dict(run_id, params.model_dump(mode="json"), "config/params.json")
    dataset = raw_data_dataset(params, root)._to_mlflow_entity()
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])])
    return run_id


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


def log_training_artifacts(client, run_id: str, history_csv: Path, history: list[dict],
                           confusion: dict[str, Any]) -> None:
    """Per-epoch CSV, its curves and the validation confusion matrix on run `run_id`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client.log_artifact(run_id, str(history_csv), artifact_path="training")
    columns = [c for c in ("train_loss", "val_loss", "val_auc", "val_accuracy") if c in history[0]]
    figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 2.8))
    for axis, column in zip(list(axes) if len(columns) > 1 else [axes], columns, strict=True):
        axis.plot([r["epoch"] + 1 for r in history], [r[column] for r in history], marker="o")
        axis.set_xlabel("epoch")
        axis.set_title(column)
    figure.tight_layout()
    client.log_figure(run_id, figure, "training/curves.png")
    plt.close(figure)
    client.log_dict(run_id, confusion, "training/val_confusion.json")
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
    client.log_figure(run_id, figure, "training/val_confusion.png")
    plt.close(figure)


def log_eps_curves(params: Params, root: Path, keys: list[ModelKey], rows: list[dict], prefix: str) -> None:
    """Log overall metrics per eps to each model's training run, so MLflow's charts show
    metric-vs-eps curves next to the training curves. The run is the one that registered
    the version holding the model's weights; `rows` carry `model` (a ModelKey), `attack`,
    `metric`, `value`, `eps`. The step is eps in grey levels (to_step: 2/255 -> 2), which
    the prefix says (`attack_vs_eps255/pgd/accuracy`: x = eps x 255).
    A model whose run is not in this store (e.g. restored from the DVC cache elsewhere)
    gets a new run tagged with its variant and seed."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    configure(params.tracking, root)
    client = MlflowClient()
    now = now_ms()
    for key in keys:
        run_id = _training_run_id(client, params, root, key, prefix)
        metrics = [
            Metric(f"{prefix}/{row['attack']}/{row['metric']}", float(row["value"]), now, to_step(row["eps"]))
            for row in rows
            if row["model"] == key and math.isfinite(row["value"])
        ]
        log_batched(client, run_id, metrics)


def _training_run_id(client, params: Params, root: Path, key: ModelKey, prefix: str) -> str:
    """The run that registered `key`'s weights, else a new finished run named after `prefix`."""
    import mlflow

    version = version_of_weights(client, params.tracking.registered_model, TrainOutputs.of(root, key).weights)
    if version is not None and version.run_id is not None:
        try:
            client.get_run(version.run_id)
            return version.run_id
        except mlflow.exceptions.MlflowException:  # not in this store
            pass
    experiment_id = ensure_experiment(params.tracking.experiment, root)
    run_id = client.create_run(experiment_id, run_name=f"{prefix}_{key.name}",
                               tags={"variant": key.variant, "seed": str(key.seed), "stage": prefix}).info.run_id
    client.set_terminated(run_id)
    print(f"note: {key.name}'s training run is not in {mlflow.get_tracking_uri()}; logged to new run {run_id}")
    return run_id
