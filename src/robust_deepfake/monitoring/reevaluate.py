"""Re-evaluate registered models by alias (@champion, @challenger) and catch robustness drops.

A re-evaluation loads one model version from the MLflow registry, attacks it on the
current test split with the current `attack` params (attacks or eps added to params.yaml
are picked up) and measures Grad-CAM stability under attack (IINC) with the `cam`
params. It logs a new run tagged `reevaluation` (linked to the version by tags and to its
logged model by `model_id`) and points the version's tag `last_reevaluation_run_id` at
it. It never trains and never writes DVC outputs.

The previous evaluation of a version is the run its tag `last_reevaluation_run_id` names
(metrics `reeval_vs_eps255/<attack>/<metric>`), or, before the first re-evaluation, the
attack sweep the pipeline logged on its training run (`<runs.SWEEP_PREFIX>/<attack>/<metric>`);
verdict.champion scores both the way the champion was chosen (score_plan, curve_score)
and compares them (score_drift). `robust-deepfake reevaluate simulate-drop`
(simulate_drop) makes the next re-evaluation of an alias see a drop, to check alerts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robust_deepfake.config import Params
from robust_deepfake.data.dataset import ImageSet, load_split
from robust_deepfake.explain.measure import CamSubset, measure
from robust_deepfake.metrics import ATTACK_METRICS
from robust_deepfake.model.device import resolve_device
from robust_deepfake.monitoring.outcome import Outcome, ReevaluationError
from robust_deepfake.paths import VARIANTS, ModelKey
from robust_deepfake.robustness.sweep import SweepMetrics, run_sweep, stratified_subset, summarize_sweep, sweep_attacks
from robust_deepfake.tracking.provenance import data_md5, run_origin
from robust_deepfake.tracking.runs import SWEEP_PREFIX, finite_metrics, log_batched, now_ms
from robust_deepfake.tracking.store import configure, ensure_experiment, require_store
from robust_deepfake import units
from robust_deepfake.units import CLEAN
from robust_deepfake.verdict.champion import (
    curve_score,
    oriented,
    score_drift,
    score_name,
    score_plan,
    sweep_curves,
    unoriented,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from robust_deepfake.model.detector import Detector

# <prefix>/<attack>/<metric>, step = eps in grey levels (units.to_step), <prefix>/clean/<metric> at step 0
REEVAL_PREFIX = "reeval_vs_eps255"
REEVAL_CAM_PREFIX = "reeval_cam_vs_eps255"  # <prefix>/<attack>/iinc_<measure>, as runs.CAM_PREFIX on training runs
TRAINING_PREFIX = SWEEP_PREFIX  # what the attack_sweep stage logs on each training run
LAST_RUN_TAG = "last_reevaluation_run_id"
SWEEP_METRICS = ATTACK_METRICS  # every metric the attack_sweep stage logs on training runs


def model_key(version: ModelVersion) -> ModelKey:
    """The registered version's model by its `variant` and `seed` tags (set at
    registration); an untagged or foreign version is keyed baseline / seed 0, which only
    names it in this evaluation's tables."""
    variant = version.tags.get("variant")
    try:
        seed = int(version.tags.get("seed", 0))
    except ValueError:
        seed = 0
    return ModelKey(variant if variant in VARIANTS else VARIANTS[0], seed)


def resolve_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion:
    import mlflow

    try:
        registered = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        raise ReevaluationError(
            f"no registered model {name!r} in {mlflow.get_tracking_uri()} (tracking.registered_model); "
            "run `dvc repro` first"
        ) from None
    if alias not in registered.aliases:
        present = ", ".join(f"@{a}" for a in sorted(registered.aliases)) or "none"
        raise ReevaluationError(
            f"{name} has no alias @{alias} (aliases: {present}); the report stage sets @champion and "
            "@challenger (`dvc repro`), or set reevaluate.aliases in params.yaml"
        )
    return client.get_model_version(name, registered.aliases[alias])


def load_version(name: str, version: str) -> tuple[Detector, int]:
    """The torch detector inside a registered pyfunc version, and its input size.

    Loaded by version number, not alias, so a concurrent alias move cannot swap the
    model between looking it up and evaluating it."""
    import mlflow.pyfunc

    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    wrapper = loaded.unwrap_python_model()
    return wrapper.model, int(wrapper.image_size)


def load_test_split(root: Path, params: Params, image_size: int) -> ImageSet:
    """The workspace's current test split at the model's input size (paths resolved
    against the repository root, not the cwd)."""
    try:
        return load_split(root / params.data.splits_dir, "test", image_size, params.data.cache_max_mb, root=root)
    except FileNotFoundError as error:
        raise ReevaluationError(str(error)) from None


def iinc_under_attack(model: Detector, test: ImageSet, params: Params, device: Any) -> list[dict]:
    """Mean IINC stability and localization per attack and eps, measured exactly as the
    cam_iinc stage does (explain.measure: same subset, attack seeds and targets), for one
    in-memory model and without figures. The clean localization is attack `clean`, eps 0
    (as in CamMetrics)."""

    def mean(values: np.ndarray) -> float:
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else math.nan

    clean, attacked = measure(model, CamSubset.from_split(test, params), params, device)
    rows = [{"attack": CLEAN, "eps": 0.0, "measure": "localization", "value": mean(clean.localization)}]
    for result in attacked:
        rows.append({"attack": result.attack, "eps": result.eps, "measure": "stability", "value": mean(result.stability)})
        rows.append({"attack": result.attack, "eps": result.eps, "measure": "localization",
                     "value": mean(result.cams.localization)})
    return rows


def previous_evaluation(
    client: MlflowClient, version: ModelVersion, metric: str = "accuracy"
) -> tuple[dict[str, dict[int, float]], str | None]:
    """Curves (attack -> eps step -> `metric`) of the version's previous evaluation and the
    run they come from; empty when there is none (see the module docstring)."""
    import mlflow

    candidates = []
    if version.tags.get(LAST_RUN_TAG):
        candidates.append((version.tags[LAST_RUN_TAG], REEVAL_PREFIX))
    if version.run_id:
        candidates.append((version.run_id, TRAINING_PREFIX))
    for run_id, prefix in candidates:
        try:
            run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            continue  # deleted, or logged to another store
        curves = {}
        for name in run.data.metrics:
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == prefix and parts[1] != CLEAN and parts[2] == metric:
                curves[parts[1]] = _latest_per_step(client, run_id, name)
        if curves:
            return curves, run_id
    return {}, None


def _latest_per_step(client: MlflowClient, run_id: str, name: str) -> dict[int, float]:
    """Metric `name`'s value at each step; the last logged one where a step was logged twice."""
    latest: dict[int, tuple[int, float]] = {}
    for point in client.get_metric_history(run_id, name):
        if point.step not in latest or point.timestamp >= latest[point.step][0]:
            latest[point.step] = (point.timestamp, point.value)
    return {step: value for step, (_, value) in latest.items()}


def reevaluate_alias(
    params: Params, root: Path, alias: str, device: str = "auto", log: Callable[[str], Any] = print
) -> Outcome:
    """Evaluate `models:/<registered_model>@<alias>` now, log it, compare with its previous
    evaluation. The caller decides what a drop means (see Outcome.dropped)."""
    from mlflow import MlflowClient

    attacks, metric = score_plan(params.report.select_by, sweep_attacks(params.attack))
    uri = require_store(params.tracking, root)  # unreachable or read-only: one line, in seconds
    client = MlflowClient()
    name = params.tracking.registered_model
    version = resolve_alias(client, name, alias)
    key = model_key(version)
    log(f"@{alias} is {name} version {version.version} ({key.name}, training run {version.run_id}); store {uri}")
    torch_device = resolve_device(device, key="the re-evaluation's device")
    model, image_size = load_version(name, version.version)
    model.to(torch_device).eval()
    test = load_test_split(root, params, image_size)
    indices = stratified_subset([s.source for s in test.samples], params.attack.max_samples, params.attack.seed)
    log(f"attacking {len(indices)} of {len(test)} test images at {image_size} px on {torch_device}: "
        f"{sweep_attacks(params.attack)}, eps {[units.label(e) for e in params.attack.eps]}, {params.attack.steps} steps; "
        f"scored by mean {'+'.join(attacks)} {score_name(metric)} (report.select_by {params.report.select_by})")
    predictions = run_sweep({key: model}, test, indices, params.attack, torch_device, show_progress=False)
    # point metrics only: the intervals are the report's business, and the bootstrap is the slow part
    point_only = params.eval.model_copy(update={"n_bootstrap": 0})
    metrics, _ = summarize_sweep(predictions, point_only, params.split.holdout_methods)
    log(f"Grad-CAM IINC on {params.cam.num_samples} images at {params.cam.target_layer}")
    cam_rows = iinc_under_attack(model, test, params, torch_device)

    current = sweep_curves(metrics, key, attacks, metric)
    previous, previous_run_id = previous_evaluation(client, version, metric)
    stability = [r["value"] for r in cam_rows if r["measure"] == "stability" and math.isfinite(r["value"])]
    outcome = Outcome(
        alias=alias, registered_model=name, version=str(version.version), model=key, run_id="",
        robustness=curve_score(oriented(current, metric), attacks),
        drift=score_drift(current, previous, params.report.select_by),
        previous_run_id=previous_run_id, clean_accuracy=float(metrics.get(key, CLEAN, 0.0).accuracy),
        iinc_stability=float(np.mean(stability)) if stability else math.nan,
        evasion_rate=curve_score(sweep_curves(metrics, key, attacks, "evasion_rate"), attacks),
    )
    outcome.run_id = log_reevaluation(client, params, root, version, outcome, metrics, cam_rows, device)
    log(outcome.describe(params.reevaluate.max_drop))
    return outcome


def _model_id(client: MlflowClient, version: ModelVersion) -> str | None:
    """The logged model behind a version (MLflow 3), when this store has it."""
    candidate = getattr(version, "model_id", None)
    if not candidate and str(version.source).startswith("models:/m-"):
        candidate = str(version.source).removeprefix("models:/").split("/")[0]
    if not candidate:
        return None
    try:
        client.get_logged_model(candidate)
    except Exception:  # noqa: BLE001 - older stores or a model logged elsewhere: tags still link
        return None
    return candidate


def log_reevaluation(
    client: MlflowClient, params: Params, root: Path, version: ModelVersion, outcome: Outcome,
    metrics: SweepMetrics, cam_rows: list[dict], device: str,
) -> str:
    """A FINISHED run tagged `reevaluation`, with per-eps curves (same shape as the training
    run's attack/* and cam/* curves; the clean row as reeval/clean/<metric> at step 0), the
    drift, and links to the version; then the version's `last_reevaluation_*` tags point
    at it."""
    from mlflow.entities import Param, RunTag

    name, number = outcome.registered_model, outcome.version
    status = outcome.status(params.reevaluate.max_drop)
    experiment_id = ensure_experiment(params.tracking.experiment, root)
    run_id = client.create_run(experiment_id, run_name=f"reevaluate_{outcome.alias}_v{number}",
                               tags=_run_tags(params, root, version, outcome, status)).info.run_id
    logged_params = {
        f"attack.{key}": json.dumps(value) if isinstance(value, list) else value
        for key, value in params.attack.model_dump(mode="json").items()
    }
    logged_params.update({"cam.num_samples": params.cam.num_samples, "cam.target_layer": params.cam.target_layer,
                          "report.select_by": params.report.select_by,
                          "reevaluate.max_drop": params.reevaluate.max_drop, "device": device})
    log_batched(client, run_id, _run_metrics(outcome, metrics, cam_rows, _model_id(client, version)),
                params=[Param(key, str(value)) for key, value in logged_params.items()],
                tags=[RunTag("compared_eps_steps", json.dumps(outcome.drift.eps_steps))])
    client.set_terminated(run_id, "FINISHED")
    version_tags = {LAST_RUN_TAG: run_id, "last_reevaluation_robustness": f"{outcome.robustness:.6f}",
                    "last_reevaluation_status": status}
    for key, value in version_tags.items():
        client.set_model_version_tag(name, number, key, value)
    return run_id


def _run_tags(params: Params, root: Path, version: ModelVersion, outcome: Outcome, status: str) -> dict[str, str]:
    drift = outcome.drift
    return {
        "reevaluation": "true", "stage": "reevaluation", "alias": outcome.alias,
        "registered_model": outcome.registered_model, "model_version": outcome.version,
        "model_run_id": version.run_id or "", "variant": version.tags.get("variant", ""),
        "seed": version.tags.get("seed", ""), "model": outcome.model.name,
        "previous_run_id": outcome.previous_run_id or "", "robustness_status": status,
        "robustness_by": f"{drift.attacks} {drift.metric}",
        "git_commit": run_origin(root).git_commit, "data_md5": data_md5(root),
        "mlflow.note.content": outcome.describe(params.reevaluate.max_drop),  # run_id is not set yet
    }


def _run_metrics(outcome: Outcome, metrics: SweepMetrics, cam_rows: list[dict], model_id: str | None) -> list:
    """The sweep and IINC curves (step = eps in grey levels) and the scalars at step 0."""
    from mlflow.entities import Metric

    now, drift = now_ms(), outcome.drift
    logged = [
        Metric(f"{REEVAL_PREFIX}/{entry.attack}/{metric}", float(getattr(entry, metric)), now,
               units.to_step(entry.eps), model_id=model_id)
        for entry in metrics.entries if entry.model == outcome.model
        for metric in SWEEP_METRICS
        if not (entry.attack == CLEAN and metric == "asr") and math.isfinite(getattr(entry, metric))
    ]
    logged += [Metric(f"{REEVAL_CAM_PREFIX}/{r['attack']}/iinc_{r['measure']}", float(r["value"]), now,
                      units.to_step(r["eps"]), model_id=model_id) for r in cam_rows if math.isfinite(r["value"])]
    scalars = finite_metrics({
        "robustness": outcome.robustness, "robustness_common": drift.current,
        "previous_robustness": drift.previous, "robustness_drop": drift.drop,
        "clean_accuracy": outcome.clean_accuracy, "iinc_stability": outcome.iinc_stability,
        "evasion_rate": outcome.evasion_rate,
    })
    return logged + [Metric(key, value, now, 0, model_id=model_id) for key, value in scalars.items()]


def simulate_drop(params: Params, root: Path, alias: str, previous: float = 1.0) -> str:
    """Make the next re-evaluation of `alias` see a drop, to check alerts end to end.

    Logs a run (tags `reevaluation=simulated`, `simulated_drop=true`) that claims the score
    `previous` (oriented: higher is more robust, so an evasion rate of 1 - previous) for
    each attack scored (score_plan) at each eps of `attack.eps`, and points
    the version's `last_reevaluation_run_id` at it: the next re-evaluation compares with it
    (drop = previous - its real score) and then points the tag at its own run, so the one
    after compares with real figures again. Nothing else changes. Returns the run's id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    attacks, metric = score_plan(params.report.select_by, sweep_attacks(params.attack))
    configure(params.tracking, root)
    client = MlflowClient()
    name = params.tracking.registered_model
    version = resolve_alias(client, name, alias)
    note = (f"Simulated previous evaluation of @{alias} ({name} v{version.version}): {score_name(metric)} {previous} on "
            f"{'+'.join(attacks)}, so the next re-evaluation reports a drop (README, Alerts)")
    tags = {"reevaluation": "simulated", "simulated_drop": "true", "alias": alias, "registered_model": name,
            "model_version": str(version.version), "model_run_id": version.run_id or "",
            "mlflow.note.content": note}
    experiment_id = ensure_experiment(params.tracking.experiment, root)
    run_id = client.create_run(experiment_id, run_name=f"simulated_previous_{alias}_v{version.version}",
                               tags=tags).info.run_id
    steps = sorted({units.to_step(eps) for eps in params.attack.eps if eps > 0})
    if not steps:
        raise ReevaluationError("attack.eps has no eps > 0 in params.yaml: a drop cannot be simulated")
    now = now_ms()
    value = unoriented(previous, metric)
    log_batched(client, run_id, [Metric(f"{REEVAL_PREFIX}/{attack}/{metric}", value, now, step)
                                 for attack in attacks for step in steps])
    client.set_terminated(run_id, "FINISHED")
    client.set_model_version_tag(name, version.version, LAST_RUN_TAG, run_id)
    return run_id
