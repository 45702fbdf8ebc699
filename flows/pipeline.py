"""The DVC pipeline as a Prefect flow: one task per dvc.yaml stage, in DVC's order.

DVC owns the DAG and the cache (robust_deepfake.orchestration); Prefect runs it, retries
transient failures, streams each stage's output into its task's log and shows it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.futures import wait
from prefect.states import Failed, State

from flows.launch import run_flow
from robust_deepfake.config import DEFAULT_PARAMS, ConfigError, load_params
from robust_deepfake.orchestration import dvc_runner
from robust_deepfake.pipeline.key_metrics import key_metrics

REPO = Path(__file__).resolve().parents[1]


def _transient_only(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry a stage only when its failure looks transient (a locked store, the network)."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, dvc_runner.StageFailed) and error.transient


@task(name="dvc-stage", task_run_name="{stage}", retries=2, retry_delay_seconds=10,
      retry_condition_fn=_transient_only, cache_policy=NO_CACHE)
def dvc_stage(stage: str, repo: str, device: str = "auto") -> bool | State:
    """`dvc repro --single-item <stage>`; True when it ran, False when DVC skipped it, a
    Failed state naming the stage and its error line (its data: the StageFailed) when it
    failed: a reason in the run's log, not a traceback."""
    logger = get_run_logger()
    try:
        result = dvc_runner.repro_stage(Path(repo), stage, dvc_runner.stage_env(device), on_line=logger.info)
    except dvc_runner.StageFailed as error:
        return Failed(message=str(error), data=error)
    if not result.ran:
        logger.info(f"{stage}: up to date, skipped by DVC")
    return result.ran


@flow(name="pipeline")
def pipeline(
    overrides: list[str] | None = None,
    device: str = "auto",
    target: str | None = None,
    experiment_name: str | None = None,
    repo: str | None = None,
    retries: int = 2,
    retry_delay_s: float = 10.0,
) -> dict[str, float | str]:
    """Run dvc.yaml's stages up to `target` (all by default) and return the key metrics.

    overrides: `key=value` as for `dvc exp run -S` (e.g. ["train.lr=0.003"]); with
        overrides (or an experiment_name) the run is saved as a DVC experiment.
    target: a stage as DVC names it (`attack_sweep`, `train_placebo`).
    device: auto, cpu, cuda:N, or several ("cuda:0,cuda:1") to run independent stages
        (train_baseline, train_placebo, train_reg) at the same time, spread over the
        devices round-robin; each train stage then trains its seeds on its one GPU.
    repo: the repository to run in (default: the one holding this file).
    """
    logger = get_run_logger()
    root = Path(repo).resolve() if repo else REPO
    try:
        devices = dvc_runner.parse_devices(device)
        params = dvc_runner.apply_overrides(root, overrides) if overrides else load_params(root / DEFAULT_PARAMS)
        dvc_runner.check_devices(params, devices)
        graph = dvc_runner.read_stage_graph(root)
        if target:
            graph = graph.up_to(target)
    except (dvc_runner.OrchestrationError, ConfigError) as error:
        return Failed(message=str(error))
    if overrides:
        logger.info(f"params.yaml overrides applied: {overrides}")
    stage = dvc_stage.with_options(retries=retries, retry_delay_seconds=retry_delay_s)
    for level in graph.levels():
        failures = []
        if len(devices) > 1 and len(level) > 1:
            futures = [stage.submit(name, str(root), devices[i % len(devices)]) for i, name in enumerate(level)]
            wait(futures)
            failures = [future.state.message for future in futures if not future.state.is_completed()]
        else:
            for name in level:
                state = stage(name, str(root), devices[0], return_state=True)
                if not state.is_completed():
                    failures = [state.message]
                    break
        if failures:
            return Failed(message="; ".join(failures))
    metrics: dict[str, float | str] = key_metrics(root, graph)  # only outputs this run covered
    if overrides or experiment_name:
        metrics["experiment"] = dvc_runner.save_experiment(root, experiment_name)
        logger.info(f"saved DVC experiment {metrics['experiment']!r} (`dvc exp show` lists it)")
    create_table_artifact(
        key="pipeline-metrics",
        table=[{"metric": key, "value": value} for key, value in metrics.items()],
        description=f"Key metrics after `dvc repro` of {', '.join(graph.stages)} in {root}",
    )
    return metrics


if __name__ == "__main__":
    run_flow(pipeline)
