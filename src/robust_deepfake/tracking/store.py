"""Where MLflow records go, and the check that the store is usable before any work.

Default store: `sqlite:///<repo>/mlflow.db` by absolute path (a relative path would
point elsewhere when DVC or Prefect run a stage from another directory), artifacts in
`<repo>/mlartifacts`. `MLFLOW_TRACKING_URI` overrides both (use a tracking server when
several processes write at once, e.g. queued `dvc exp` runs).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from robust_deepfake.config import TrackingConfig
from robust_deepfake.errors import StageError
from robust_deepfake.paths import find_repo_root

EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
DEFAULT_DB = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
# MLflow retries an unreachable server 7 times with exponential backoff and a 120 s
# timeout (minutes of silence); ours answer within seconds. MLflow's own variables, so a
# user who sets them wins.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

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


def require_store(config: TrackingConfig, root: Path, write: bool = True) -> str:
    """Configure MLflow and prove the store usable before any work: an HTTP tracking server
    must answer its /health endpoint (bounded by MLFLOW_HTTP_REQUEST_TIMEOUT, default 5 s
    here), a sqlite store must be writable (with `write`). A one-line StageError otherwise,
    so a stage fails in seconds instead of after its training."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    uri = configure(config, root)
    if uri.startswith(("http://", "https://")):
        _require_server(uri)
    elif write and uri.startswith("sqlite:///") and not uri.startswith("sqlite:///file:"):  # not sqlite's URI form
        _require_writable(uri)
    return uri


def _require_server(uri: str) -> None:
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


def _require_writable(uri: str) -> None:
    database = Path(uri.removeprefix("sqlite:///"))
    folder = database.parent
    if not folder.is_dir():
        raise StageError(f"{database}: its folder does not exist (tracking URI {uri})")
    if (database.exists() and not os.access(database, os.W_OK)) or not os.access(folder, os.W_OK):
        raise StageError(f"{database}: the MLflow store is read-only for this user (tracking URI {uri}); "
                         "fix its permissions or point MLFLOW_TRACKING_URI at a writable store")


def ensure_experiment(name: str, root: Path) -> str:
    """The experiment's id, created on first use, with the landing tags (landing_tags): its
    description and the saved runs view that landing_url opens."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if mlflow.get_tracking_uri().startswith("sqlite:"):
            location = (store_root(root) / ARTIFACT_DIR).as_uri()
        return mlflow.create_experiment(name, artifact_location=location, tags=landing_tags())
    stale = {key: value for key, value in landing_tags().items() if experiment.tags.get(key) != value}
    if stale and not _description_edited(experiment.tags):
        client = mlflow.MlflowClient()
        for key, value in stale.items():
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


# --- what `mlflow ui` opens on ---------------------------------------------------------------
# MLflow 3.x opens an experiment on its GenAI overview unless the page is asked for the
# "machine_learning" workflow (`workflowType` in the URL, then remembered by the browser);
# the experimentKind tag alone does not do it. `viewStateShareKey=<key>` applies the view
# saved in the experiment tag `mlflow.sharedViewState.<key>` (plain JSON): its run-table
# columns. landing_url() is the address that does both.
DESCRIPTION_TAG = "mlflow.note.content"
VIEW_KEY = "runs"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
LANDING_QUERY = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
RUN_COLUMNS = (("tags", "variant"), ("tags", "seed"), ("tags", "stage"), ("metrics", "best/val_auc"),
               ("metrics", "best/val_accuracy"), ("metrics", "best_epoch"), ("metrics", "epochs_run"),
               ("metrics", "acc_clean/reg"), ("metrics", "acc_clean/baseline"))
EXPERIMENT_DESCRIPTION = """**robust-deepfake**: one run per training, named `train_<variant>-seed<k>` (variant: baseline, placebo, reg), tagged `variant`, `seed`, `stage`; one `report` run per report with the verdict's numbers. Metric groups: `Training/*` per epoch (step = epoch, from 1), `best/*` the chosen epoch, `attack_vs_eps255/<attack>/*` and `cam_vs_eps255/<attack>/*` (step = eps in grey levels, k of k/255). The registered model `robust-deepfake-detector` holds one version per training, its description is its model card.

Runs table with these columns: `#/experiments/<id>/runs?""" + LANDING_QUERY + "` (`robust-deepfake mlflow-url` prints it)."


def run_view() -> dict:
    """The saved runs view: the columns a reader compares models by, every run shown."""
    return {"selectedColumns": [f"{kind}.`{name}`" for kind, name in RUN_COLUMNS], "runsHiddenMode": "SHOW_ALL"}


def landing_tags() -> dict[str, str]:
    """The experiment tags landing_url relies on: kind, description, saved runs view."""
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, DESCRIPTION_TAG: EXPERIMENT_DESCRIPTION,
            VIEW_TAG: json.dumps(run_view(), separators=(",", ":"))}


def _description_edited(tags: dict[str, str]) -> bool:
    """True when someone wrote their own description in the UI: it is kept (and with it the
    other landing tags, which are then theirs to keep too)."""
    description = tags.get(DESCRIPTION_TAG)
    return description is not None and not description.startswith("**robust-deepfake**")


def landing_url(server: str, experiment_id: str) -> str:
    """The address of the experiment's runs table, with the saved view, on `server`
    (e.g. http://127.0.0.1:5000)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{LANDING_QUERY}"
