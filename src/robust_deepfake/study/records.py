"""A study's shared memory: one MLflow run per finished cell, under the study's parent run.

Every host points at the same tracking server, so the record of a cell is visible to all:
a cell whose hash (resolved params + code) already has a FINISHED record is reused, not
recomputed, wherever it ran. The record is the run's `cell.json` artifact; its numbers
are also the run's metrics (`reg/acc_pgd`) and its setting the run's params, so
`mlflow ui` compares cells side by side (filter `tags.study = '<name>'`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from robust_deepfake.errors import StageError
from robust_deepfake.tracking.store import ensure_experiment, require_store

STUDY_TAG = "study"
HASH_TAG = "study.cell_hash"
KIND_TAG = "study.kind"  # "study" (the parent) or "cell"
PARENT_TAG = "mlflow.parentRunId"
RECORD_FILE = "cell.json"


def open_store(params: Any, root: Path, shared: bool) -> str:
    """Configure MLflow from params (MLFLOW_TRACKING_URI wins) and return the experiment id.
    A study across hosts needs a tracking server: a sqlite file is one machine's memory."""
    uri = require_store(params.tracking, root)
    if shared and not uri.startswith(("http://", "https://")):
        raise StageError(f"a study on a work pool needs an MLflow tracking server shared by every host, got "
                         f"{uri}; start one (docs/study.md) and export MLFLOW_TRACKING_URI=http://...")
    return ensure_experiment(params.tracking.experiment, root)


def find_record(experiment_id: str, cell_hash: str) -> dict[str, Any] | None:
    """The record of a finished cell with this hash, from any host; None when there is none."""
    import mlflow

    runs = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{HASH_TAG}` = '{cell_hash}' and attributes.status = 'FINISHED'",
        max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        return None
    record = mlflow.artifacts.load_dict(f"{runs[0].info.artifact_uri.rstrip('/')}/{RECORD_FILE}")
    return {**record, "mlflow_run_id": runs[0].info.run_id}


def _flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    metrics = {"device_seconds": float(record.get("device_seconds") or 0.0)}
    for variant, values in record["variants"].items():
        metrics.update({f"{variant}/{name}": value for name, value in values.items()})
    for method, variants in record.get("heldout", {}).items():
        for variant, values in variants.items():
            metrics.update({f"heldout/{method}/{variant}/{name}": value for name, value in values.items()})
    return {key: float(value) for key, value in metrics.items() if value is not None and math.isfinite(value)}


def log_record(experiment_id: str, record: dict[str, Any], parent_run_id: str | None) -> str:
    """One FINISHED run holding the cell's record; its id."""
    import mlflow

    client = mlflow.MlflowClient()
    tags = {STUDY_TAG: record["study"], KIND_TAG: "cell", HASH_TAG: record["cell_hash"],
            "mlflow.runName": record["label"], "dvc_experiment": record["dvc_experiment"],
            "worker": str(record.get("worker")), "host": str(record.get("host")),
            "cuda_visible_devices": str(record.get("cuda_visible_devices"))}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    run = client.create_run(experiment_id, tags=tags, run_name=record["label"])
    run_id = run.info.run_id
    try:
        params = {key: json.dumps(value) if isinstance(value, list) else value
                  for key, value in record["setting"].items()}
        client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in
                                         {**params, "seed": record["seed"]}.items()],
                         metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in _flat_metrics(record).items()])
        client.log_dict(run_id, record, RECORD_FILE)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def start_study_run(experiment_id: str, name: str, spec: dict[str, Any], cells: int) -> str:
    """The parent run of this study invocation: cells computed now are its children."""
    import mlflow

    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=f"study {name}",
                            tags={STUDY_TAG: name, KIND_TAG: "study"})
    client.log_dict(run.info.run_id, spec, "study_spec.json")
    client.log_param(run.info.run_id, "cells", cells)
    return run.info.run_id


def finish_study_run(run_id: str, files: list[Path], summary: dict[str, float], failed: bool) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for path in files:
        client.log_artifact(run_id, str(path), "report" if path.is_file() else None)
    for key, value in summary.items():
        if value is not None and math.isfinite(value):
            client.log_metric(run_id, key, float(value))
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
