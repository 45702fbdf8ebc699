"""Scheduled re-evaluation of the registered models (@champion, @challenger) as a Prefect flow.

Nothing is retrained: each alias's model version is attacked again on the current test
split with the current attack params (robust_deepfake.ops.reevaluation), a run tagged
`reevaluation` is logged, and the flow fails when robustness (the `report.select_by`
score that chose @champion, robustness.verdict) dropped by more than
`reevaluate.max_drop` since that version's previous evaluation.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from robust_deepfake.config import ConfigError, load_params
from robust_deepfake.errors import StageError
from robust_deepfake.ops import reevaluation

REPO = Path(__file__).resolve().parents[1]


@task(name="reevaluate-model", task_run_name="reevaluate-{alias}", cache_policy=NO_CACHE)
def reevaluate_alias(alias: str, repo: str, device: str = "auto") -> reevaluation.Outcome:
    logger = get_run_logger()
    root = Path(repo)
    return reevaluation.reevaluate(load_params(root / "params.yaml"), root, alias, device, log=logger.info)


@flow(name="reevaluate")
def reevaluate(aliases: list[str] | None = None, device: str = "auto", repo: str | None = None) -> dict[str, dict]:
    """Re-evaluate `aliases` (default: reevaluate.aliases in params.yaml); returns each
    alias's figures and MLflow run id, or ends Failed naming the aliases that dropped."""
    root = Path(repo).resolve() if repo else REPO
    try:
        params = load_params(root / "params.yaml")
    except ConfigError as error:
        return Failed(message=str(error))
    max_drop = params.reevaluate.max_drop
    outcomes, problems = [], []
    for alias in aliases or params.reevaluate.aliases:
        try:
            outcomes.append(reevaluate_alias(alias, str(root), device))
        except (StageError, FileNotFoundError, ValueError) as error:  # ReevaluationError, DeviceError, ...
            problems.append(f"@{alias}: {error}")
    if outcomes:
        create_table_artifact(
            key="reevaluation",
            table=[outcome.as_dict() for outcome in outcomes],
            description=f"Re-evaluation of {params.tracking.registered_model}; fails above a drop of {max_drop}",
        )
    problems += [f"robustness drop: {outcome.describe(max_drop)}" for outcome in outcomes if outcome.dropped(max_drop)]
    if problems:
        return Failed(message=" | ".join(problems))
    return {outcome.alias: outcome.as_dict() for outcome in outcomes}


if __name__ == "__main__":
    reevaluate()
