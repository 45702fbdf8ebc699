"""Scheduled re-evaluation of the registered models (@champion, @challenger) as a Prefect flow.

Nothing is retrained: each alias's model version is attacked again on the current test
split with the current attack params (robust_deepfake.monitoring), a run tagged
`reevaluation` is logged, and the flow fails when robustness (the `report.select_by`
score that chose @champion, verdict.champion) dropped by more than
`reevaluate.max_drop` since that version's previous evaluation. On a drop it also sends
the failure message through the Prefect notification block `notify_block` names
(`<block-type-slug>/<block-name>`, e.g. `slack-webhook/robustness-alerts`), when set.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.blocks.core import Block
from prefect.blocks.abstract import NotificationBlock
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from flows.launch import run_flow
from robust_deepfake.config import DEFAULT_PARAMS, ConfigError, load_params
from robust_deepfake.errors import StageError
from robust_deepfake.monitoring.outcome import Alert, Outcome, drop_alert
from robust_deepfake.monitoring.reevaluate import reevaluate_alias

REPO = Path(__file__).resolve().parents[1]


@task(name="reevaluate-model", task_run_name="reevaluate-{alias}", cache_policy=NO_CACHE)
def reevaluation_task(alias: str, repo: str, device: str = "auto") -> Outcome | State:
    """The alias's Outcome, or a Failed state whose message says why it could not be
    evaluated (no registered model, no such alias, a bad device, ...): a reason, not a
    traceback in the run's log."""
    logger = get_run_logger()
    root = Path(repo)
    try:
        return reevaluate_alias(load_params(root / DEFAULT_PARAMS), root, alias, device, log=logger.info)
    except (StageError, FileNotFoundError, ValueError) as error:  # ReevaluationError, DeviceError, ...
        return Failed(message=f"@{alias}: {error}")


class NotifyBlockError(StageError):
    """The notification block `notify_block` names cannot be loaded; str() says what to do."""


def load_notifier(ref: str) -> NotificationBlock:
    """The saved notification block `<block-type-slug>/<block-name>` (`prefect block ls`)."""
    hint = ("create it (docs/orchestration.md, Alerts) or pick one from `prefect block ls`; "
            "notify_block takes '<block-type-slug>/<block-name>', e.g. 'slack-webhook/robustness-alerts'")
    if ref.count("/") != 1 or not all(ref.split("/")):
        raise NotifyBlockError(f"notify_block {ref!r}: expected '<block-type-slug>/<block-name>'; {hint}")
    try:
        block = Block.load(ref)
    except Exception as error:  # noqa: BLE001 - unknown type or name, no server: say which block and why
        raise NotifyBlockError(f"notify_block {ref!r} cannot be loaded ({type(error).__name__}: {error}); {hint}") from None
    if not isinstance(block, NotificationBlock):
        raise NotifyBlockError(f"notify_block {ref!r} is a {type(block).__name__}, not a notification block; {hint}")
    return block


def send_alert(block: NotificationBlock, ref: str, alert: Alert, logger) -> str | None:
    """Send `alert` through `block`; None when sent, else why not (also logged as a warning).
    Apprise blocks (Slack, email, ...) report failures only inside raise_on_failure()."""
    body = alert.body
    url = flow_run_ui_url()
    if url:
        body += f"\nPrefect flow run: {url}"
    try:
        with block.raise_on_failure():
            block.notify(body, subject=alert.subject)
    except Exception as error:  # noqa: BLE001 - any failure to alert must reach the run's state, never crash it
        problem = f"alert not sent through notify_block {ref!r}: {type(error).__name__}: {error}"
        logger.warning(problem)
        return problem
    logger.info(f"alert sent through notify_block {ref!r}: {alert.subject}")
    return None


def flow_run_ui_url() -> str | None:
    try:
        from prefect.runtime import flow_run

        return flow_run.ui_url
    except Exception:  # noqa: BLE001 - a link is a nicety
        return None


@flow(name="reevaluate")
def reevaluate(
    aliases: list[str] | None = None, device: str = "auto", repo: str | None = None, notify_block: str | None = None,
) -> dict[str, dict]:
    """Re-evaluate `aliases` (default: reevaluate.aliases in params.yaml); returns each
    alias's figures and MLflow run id, or ends Failed naming the aliases that dropped (one
    line each, `robustness drop: @alias (model vN): ...`). On a drop the same lines go out
    through the notification block `notify_block` (`<block-type-slug>/<block-name>`),
    when set; a block that cannot be loaded fails the run before any evaluation, and a
    notification that cannot be sent is logged and added to the failure message."""
    logger = get_run_logger()
    root = Path(repo).resolve() if repo else REPO
    try:
        params = load_params(root / DEFAULT_PARAMS)
        notifier = load_notifier(notify_block) if notify_block else None
    except (ConfigError, NotifyBlockError) as error:
        return Failed(message=str(error))
    max_drop = params.reevaluate.max_drop
    outcomes, problems = [], []
    for alias in aliases or params.reevaluate.aliases:
        state = reevaluation_task(alias, str(root), device, return_state=True)
        if state.is_completed():
            outcomes.append(state.result())
        else:
            problems.append(state.message)
    if outcomes:
        create_table_artifact(
            key="reevaluation",
            table=[outcome.as_dict() for outcome in outcomes],
            description=f"Re-evaluation of {params.tracking.registered_model}; fails above a drop of {max_drop}",
        )
    alert = drop_alert(outcomes, max_drop)
    if alert:
        problems = alert.lines + problems
        for line in alert.lines:
            logger.error(line)  # what `prefect deployment run ... --watch` shows
        if notifier is None:
            logger.warning("no notification sent: notify_block is not set (docs/orchestration.md, Alerts)")
        else:
            problem = send_alert(notifier, notify_block, alert, logger)
            if problem:
                problems.append(problem)
    if problems:
        return Failed(message=" | ".join(problems))
    return {outcome.alias: outcome.as_dict() for outcome in outcomes}


if __name__ == "__main__":
    run_flow(reevaluate)
