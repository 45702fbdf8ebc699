"""Re-evaluate registered models by alias (@champion, @challenger) and catch robustness drops.

A re-evaluation loads one model version from the MLflow registry, attacks it on the
current test split with the current `attack` params (attacks or eps added to params.yaml
are picked up) and measures Grad-CAM stability under attack (IINC) with the `cam`
params. It logs a new run tagged `reevaluation` (linked to the version by tags and to its
logged model by `model_id`) and points the version's tag `last_reevaluation_run_id` at
it. It never trains and never writes DVC outputs.

"Robustness" is the mean PGD accuracy over eps > 0 (the mean over all attacks when PGD is
not configured). The previous evaluation of a version is the run its tag
`last_reevaluation_run_id` names (metrics `reeval/<attack>/accuracy`), or, before the
first re-evaluation, the attack sweep the pipeline logged on its training run
(`attack/<attack>/accuracy`). Both are compared on the eps they share (steps = eps in
hundredths of a grey level, evaluation.eps_step), so a new eps is never read as a drop;
drop = previous - current.

Heavy imports (torch, mlflow) are inside the functions: `robustness` is also used by
orchestration.key_metrics, which must import fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust_deepfake.config import Params

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from robust_deepfake.data.dataset import ImageSet
    from robust_deepfake.models import Detector

REEVAL_PREFIX = "reeval"  # reeval/<attack>/<metric>, step = eps_step(eps)
REEVAL_CAM_PREFIX = "reeval_cam"  # reeval_cam/<attack>/iinc_<measure>, as cam/<attack>/... on training runs
TRAINING_PREFIX = "attack"  # what stages/attack_sweep.py logs on each training run
LAST_RUN_TAG = "last_reevaluation_run_id"

Curves = Mapping[str, Mapping[Any, float]]  # attack -> eps (or eps step) -> accuracy


class ReevaluationError(RuntimeError):
    """A model cannot be re-evaluated (no such alias, no test split); str() says what to do."""


def robustness(curves: Curves, attacks: list[str] | None = None, eps: set | None = None) -> tuple[float, str]:
    """Mean accuracy under attack and the attacks it averages: PGD when present, else all.

    `eps` keys equal to 0 (the clean row) never count; `eps` restricts to a shared grid."""
    chosen = attacks or (["pgd"] if "pgd" in curves else sorted(curves))
    values = [
        value
        for attack in chosen
        for key, value in curves.get(attack, {}).items()
        if key > 0 and (eps is None or key in eps) and math.isfinite(value)
    ]
    label = "+".join(chosen)
    return (float(sum(values) / len(values)) if values else math.nan), label


@dataclass
class Comparison:
    """This evaluation against the previous one, on the attacks and eps both have."""

    current: float
    previous: float | None = None
    attacks: str = ""
    eps_steps: list[int] = field(default_factory=list)
    note: str = ""

    @property
    def drop(self) -> float | None:
        return None if self.previous is None else self.previous - self.current


def compare(current: Curves, previous: Curves | None) -> Comparison:
    if not previous:
        value, label = robustness(current)
        return Comparison(value, attacks=label, note="no previous evaluation")
    attacks = ["pgd"] if "pgd" in current and "pgd" in previous else sorted(set(current) & set(previous))
    shared: set = set()
    for position, attack in enumerate(attacks):
        steps = {k for k in current[attack] if k > 0} & {k for k in previous[attack] if k > 0}
        shared = steps if position == 0 else shared & steps
    if not shared:
        value, label = robustness(current)
        return Comparison(value, attacks=label, note="no attack and eps in common with the previous evaluation")
    now, label = robustness(current, attacks, shared)
    before, _ = robustness(previous, attacks, shared)
    return Comparison(now, before, label, sorted(shared))


@dataclass
class Outcome:
    """One alias's re-evaluation: what was evaluated, where it was logged, how it compares."""

    alias: str
    registered_model: str
    version: str
    run_id: str
    robustness: float  # over the whole current grid
    comparison: Comparison
    previous_run_id: str | None
    clean_accuracy: float
    iinc_stability: float

    def dropped(self, max_drop: float) -> bool:
        drop = self.comparison.drop
        return drop is not None and drop > max_drop

    def describe(self, max_drop: float) -> str:
        """One readable line: the figures, the verdict and the run to open."""
        run = f"; run {self.run_id}" if self.run_id else ""
        who = f"@{self.alias} ({self.registered_model} v{self.version})"
        c = self.comparison
        if c.previous is None:
            return f"{who}: mean {c.attacks} accuracy {self.robustness:.3f} ({c.note}){run}"
        verdict = f"dropped by {c.drop:.3f} > reevaluate.max_drop {max_drop}" if self.dropped(max_drop) \
            else f"change {c.current - c.previous:+.3f} (max_drop {max_drop})"
        from robust_deepfake.evaluation import eps_label

        grid = ", ".join(eps_label(step / 25500) for step in c.eps_steps)
        return (f"{who}: mean {c.attacks} accuracy over eps [{grid}] {c.current:.3f}, previous evaluation "
                f"{c.previous:.3f} (run {self.previous_run_id}): {verdict}{run}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias, "version": self.version, "run_id": self.run_id, "robustness": self.robustness,
            "previous": self.comparison.previous, "drop": self.comparison.drop,
            "previous_run_id": self.previous_run_id, "clean_accuracy": self.clean_accuracy,
            "iinc_stability": self.iinc_stability,
        }


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
    from robust_deepfake.data.dataset import load_split

    try:
        return load_split(root / params.data.splits_dir, "test", image_size, params.data.cache_max_mb, root=root)
    except FileNotFoundError as error:
        raise ReevaluationError(str(error)) from None


def iinc_under_attack(model: Detector, test: ImageSet, params: Params, device: Any) -> list[dict]:
    """Mean IINC stability and localization per attack and eps, measured exactly as the
    cam_iinc stage does (cam_measure: same subset, attack seeds and targets), for one
    in-memory model and without figures."""
    import numpy as np

    from robust_deepfake.cam_measure import CamSubset, measure

    def mean(values: np.ndarray) -> float:
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else math.nan

    clean, attacked = measure(model, CamSubset.from_split(test, params), params, device)
    rows = [{"attack": "none", "eps": 0.0, "measure": "localization", "value": mean(clean.localization)}]
    for result in attacked:
        rows.append({"attack": result.attack, "eps": result.eps, "measure": "stability", "value": mean(result.stability)})
        rows.append({"attack": result.attack, "eps": result.eps, "measure": "localization",
                     "value": mean(result.cams.localization)})
    return rows


def previous_evaluation(client: MlflowClient, version: ModelVersion) -> tuple[dict[str, dict[int, float]], str | None]:
    """Accuracy curves (attack -> eps step -> accuracy) of the version's previous evaluation
    and the run they come from; empty when there is none (see the module docstring)."""
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
        for key in run.data.metrics:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == prefix and parts[2] == "accuracy":
                latest: dict[int, tuple[int, float]] = {}
                for point in client.get_metric_history(run_id, key):
                    if point.step not in latest or point.timestamp >= latest[point.step][0]:
                        latest[point.step] = (point.timestamp, point.value)
                curves[parts[1]] = {step: value for step, (_, value) in latest.items()}
        if curves:
            return curves, run_id
    return {}, None


def reevaluate(
    params: Params, root: Path, alias: str, device: str = "auto", log: Callable[[str], Any] = print
) -> Outcome:
    """Evaluate `models:/<registered_model>@<alias>` now, log it, compare with its previous
    evaluation. The caller decides what a drop means (see Outcome.dropped)."""
    import numpy as np
    from mlflow import MlflowClient

    from robust_deepfake.evaluation import eps_label, eps_step, run_sweep, stratified_subset, summarize
    from robust_deepfake.models import resolve_device
    from robust_deepfake.tracking import configure

    uri = configure(params.tracking, root)
    client = MlflowClient()
    name = params.tracking.registered_model
    version = resolve_alias(client, name, alias)
    log(f"@{alias} is {name} version {version.version} (training run {version.run_id}); store {uri}")
    model, image_size = load_version(name, version.version)
    torch_device = resolve_device(device)
    test = load_test_split(root, params, image_size)
    indices = stratified_subset([s.source for s in test.samples], params.attack.max_samples, params.attack.seed)
    log(f"attacking {len(indices)} of {len(test)} test images at {image_size} px on {torch_device}: "
        f"{params.attack.attacks}, eps {[eps_label(e) for e in params.attack.eps_grid]}, {params.attack.steps} steps")
    predictions = run_sweep({alias: model}, test, indices, params.attack, torch_device, show_progress=False)
    # point metrics only: the intervals are the report's business, and the bootstrap is the slow part
    point_only = params.eval.model_copy(update={"n_bootstrap": 0})
    compact, rows = summarize(predictions, point_only, params.split.holdout_methods)
    rows = [r for r in rows if r["source"] == "all"]
    log(f"Grad-CAM IINC on {params.cam.num_samples} images at {params.cam.target_layer}")
    cam_rows = iinc_under_attack(model, test, params, torch_device)

    current = {a: {eps_step(r["eps"]): r["value"] for r in rows if r["attack"] == a and r["metric"] == "accuracy"}
               for a in params.attack.attacks}
    previous, previous_run_id = previous_evaluation(client, version)
    comparison = compare(current, previous)
    stability = [r["value"] for r in cam_rows if r["measure"] == "stability" and math.isfinite(r["value"])]
    outcome = Outcome(
        alias=alias, registered_model=name, version=str(version.version), run_id="",
        robustness=robustness(current)[0], comparison=comparison, previous_run_id=previous_run_id,
        clean_accuracy=float(compact[alias][params.attack.attacks[0]]["0"]["accuracy"]),
        iinc_stability=float(np.mean(stability)) if stability else math.nan,
    )
    outcome.run_id = log_reevaluation(client, params, root, version, outcome, rows, cam_rows, device)
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
    rows: list[dict], cam_rows: list[dict], device: str,
) -> str:
    """A FINISHED run tagged `reevaluation`, with per-eps curves (same shape as the training
    run's attack/* and cam/* curves), the comparison, and links to the version; then the
    version's `last_reevaluation_*` tags point at it."""
    import json
    import time

    from mlflow.entities import Metric, Param, RunTag

    from robust_deepfake.evaluation import eps_step
    from robust_deepfake.tracking import data_md5, ensure_experiment, finite_metrics, git_commit

    name, number = outcome.registered_model, outcome.version
    comparison = outcome.comparison
    status = "no_previous" if comparison.previous is None else (
        "dropped" if outcome.dropped(params.reevaluate.max_drop) else "ok")
    tags = {
        "reevaluation": "true", "stage": "reevaluation", "alias": outcome.alias, "registered_model": name,
        "model_version": number, "model_run_id": version.run_id or "", "variant": version.tags.get("variant", ""),
        "previous_run_id": outcome.previous_run_id or "", "robustness_status": status,
        "git_commit": git_commit(root), "data_md5": data_md5(root),
        "mlflow.note.content": outcome.describe(params.reevaluate.max_drop),  # run_id is not set yet
    }
    experiment_id = ensure_experiment(params.tracking.experiment, root)
    run_id = client.create_run(experiment_id, run_name=f"reevaluate_{outcome.alias}_v{number}", tags=tags).info.run_id
    model_id = _model_id(client, version)
    now = int(time.time() * 1000)
    metrics = [Metric(f"{REEVAL_PREFIX}/{r['attack']}/{r['metric']}", float(r["value"]), now, eps_step(r["eps"]),
                      model_id=model_id) for r in rows if math.isfinite(r["value"])]
    metrics += [Metric(f"{REEVAL_CAM_PREFIX}/{r['attack']}/iinc_{r['measure']}", float(r["value"]), now,
                       eps_step(r["eps"]), model_id=model_id) for r in cam_rows if math.isfinite(r["value"])]
    scalars = finite_metrics({
        "robustness": outcome.robustness, "robustness_common": comparison.current,
        "previous_robustness": comparison.previous, "robustness_drop": comparison.drop,
        "clean_accuracy": outcome.clean_accuracy, "iinc_stability": outcome.iinc_stability,
    })
    metrics += [Metric(key, value, now, 0, model_id=model_id) for key, value in scalars.items()]
    logged_params = {
        f"attack.{key}": json.dumps(value) if isinstance(value, list) else value
        for key, value in params.attack.model_dump(mode="json").items()
    }
    logged_params.update({"cam.num_samples": params.cam.num_samples, "cam.target_layer": params.cam.target_layer,
                          "reevaluate.max_drop": params.reevaluate.max_drop, "device": device})
    param_list = [Param(key, str(value)) for key, value in logged_params.items()]
    for start in range(0, max(len(metrics), 1), 900):
        client.log_batch(run_id, metrics=metrics[start : start + 900], params=param_list if start == 0 else [],
                         tags=[RunTag("compared_eps_steps", json.dumps(comparison.eps_steps))] if start == 0 else [])
    client.set_terminated(run_id, "FINISHED")
    version_tags = {LAST_RUN_TAG: run_id, "last_reevaluation_robustness": f"{outcome.robustness:.6f}",
                    "last_reevaluation_status": status}
    for key, value in version_tags.items():
        client.set_model_version_tag(name, number, key, value)
    return run_id
