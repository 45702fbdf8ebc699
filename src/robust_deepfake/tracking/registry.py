"""The model registry: versions found by their weights, aliases, and the report's publication.

Every registered version carries the sha256 of its model.pt (WEIGHTS_TAG): the DVC out is
found in the registry by its content, so no run id needs to live inside the (byte-stable)
outs. Only a run of committed inputs outside `dvc exp` moves aliases (provenance.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from robust_deepfake.config import Params
from robust_deepfake.errors import StageError
from robust_deepfake.io import finite_number
from robust_deepfake.paths import ModelKey, TrainOutputs
from robust_deepfake.tracking.provenance import RunOrigin, machine_facts, run_origin
from robust_deepfake.tracking.store import configure, ensure_experiment

WEIGHTS_TAG = "weights_sha256"
FLOOR_TAG = "quality_floor"  # `passed: …` / `failed: …`, written by the report (verdict.QualityFloor)
REPORT_CARD_MARK = "<!-- report -->"  # where the report's section of a model card starts


def weights_sha256(path: Path) -> str:
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


def alias_variant(params: Params, root: Path, alias: str) -> str | None:
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

    weights = TrainOutputs.of(root, key).weights
    version = version_of_weights(client, name, weights)
    if version is None:
        raise StageError(
            f"no version of {name} in {mlflow.get_tracking_uri()} holds {key.name}'s weights "
            f"({weights}): they were trained with another tracking store or restored from "
            f"the DVC cache; re-run `dvc repro -f -s train_{key.variant}` with this store"
        )
    return str(version.version)


def publish_report(params: Params, root: Path, decision, outputs, cards: dict[ModelKey, str] | None = None) -> dict:
    """Log the report to a `report` run; tag every model's version with its quality floor
    and append the report's section to its model card; then, for a run of committed
    inputs outside `dvc exp` only, move the aliases: `@<variant>` to each variant's
    representative seed and, when the decision allows it, `@champion` / `@challenger`
    (never onto a model under the floor). Returns the versions and what moved."""
    from mlflow import MlflowClient

    configure(params.tracking, root)
    client = MlflowClient()
    origin = run_origin(root)
    name = params.tracking.registered_model
    versions = {variant: _registered_version(client, name, root, key)
                for variant, key in decision.representatives.items()}
    _log_report_run(params, root, decision, outputs, origin)
    _tag_versions(client, params, root, decision, versions, cards or {})
    moved = _move_aliases(client, name, decision, versions, origin)
    return {"champion_version": versions[decision.champion.variant],
            "challenger_version": versions[decision.challenger.variant], "aliases_moved": moved}


def _log_report_run(params: Params, root: Path, decision, outputs, origin: RunOrigin) -> None:
    import mlflow

    experiment_id = ensure_experiment(params.tracking.experiment, root)
    with mlflow.start_run(experiment_id=experiment_id, run_name="report",
                          tags={"stage": "report", "champion": decision.champion.name, **origin.tags()}):
        mlflow.log_params({"select_by": params.report.select_by, "seeds": json.dumps(params.train.seeds),
                           "min_clean_auc": params.report.min_clean_auc, "champion": decision.champion.name,
                           "move_champion": decision.move_champion})
        mlflow.log_param("min_effect", params.report.min_effect)
        mlflow.set_tags({f"machine.{k}": v for k, v in machine_facts(params.train.num_threads).items()})
        mlflow.log_metrics({f"score_{variant}": value for variant, value in decision.variant_scores.items()})
        mlflow.log_metrics(headline_metrics(outputs.metrics))
        mlflow.set_tags(answer_tags(outputs.metrics, outputs.verdict))
        for path in (outputs.html, outputs.markdown, outputs.verdict, outputs.metrics):
            mlflow.log_artifact(str(path))
        mlflow.log_artifacts(str(outputs.figures), artifact_path="figures")


def headline_metrics(path: Path) -> dict[str, float]:
    """metrics/report.json's finite numbers as MLflow metrics, nested keys joined by `/`
    (`pgd_acc_diff/reg_placebo/mean`, `acc_pgd/placebo`): the verdict's answers in the run."""
    found: dict[str, float] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}/{key}" if prefix else str(key))
        elif (number := finite_number(node)) is not None:
            found[prefix] = number

    walk(json.loads(Path(path).read_text()), "")
    return found


def answer_tags(metrics_path: Path, verdict_path: Path) -> dict[str, str]:
    """`answer.<pair>`: the short reading (`favours reg`, `no detectable difference`) of each
    comparison report.json answers with (its `<attack>_acc_diff` rows), from eval/verdict.json."""
    headline = json.loads(Path(metrics_path).read_text())
    rows = json.loads(Path(verdict_path).read_text()).get("differences", [])
    tags = {}
    for key, pairs in headline.items():
        if not key.endswith("_acc_diff") or not isinstance(pairs, dict):
            continue
        attack = key.removesuffix("_acc_diff")
        for row in rows:
            if (row.get("attack"), row.get("metric")) == (attack, "accuracy") and row.get("comparison") in pairs:
                tags[f"answer.{row['comparison']}"] = f"{attack} accuracy: {row.get('verdict')}"
    return tags


def _tag_versions(client, params: Params, root: Path, decision, versions: dict[str, str],
                  cards: dict[ModelKey, str]) -> None:
    """The quality floor and the report's card section on every model's version, the
    variant's seed-mean score on each representative version."""
    name = params.tracking.registered_model
    for key in decision.floor.clean_auc:
        found = version_of_weights(client, name, TrainOutputs.of(root, key).weights)
        if found is None:
            continue
        client.set_model_version_tag(name, found.version, FLOOR_TAG, decision.floor.describe(key))
        if key in cards:
            card = (found.description or "").split(REPORT_CARD_MARK)[0].rstrip()
            client.update_model_version(name, found.version, description=f"{card}\n\n{REPORT_CARD_MARK}\n{cards[key]}")
    for variant, version in versions.items():
        client.set_model_version_tag(name, version, f"robustness_{params.report.select_by}_seed_mean",
                                     f"{decision.variant_scores[variant]:.6f}")


def _move_aliases(client, name: str, decision, versions: dict[str, str], origin: RunOrigin) -> list[str]:
    """Last, after every tag, so no alias points at an untagged version; none moves for a
    run that may not speak for production."""
    if not origin.may_move_aliases:
        print(f"note: no alias moved: {origin.why_aliases_stay()}")
        return []
    moved: list[str] = []
    for variant, version in versions.items():
        client.set_registered_model_alias(name, variant, version)
        moved.append(variant)
    if decision.move_champion:
        client.set_registered_model_alias(name, "champion", versions[decision.champion.variant])
        moved.append("champion")
    if decision.move_challenger:
        client.set_registered_model_alias(name, "challenger", versions[decision.challenger.variant])
        moved.append("challenger")
    return moved

