"""A study: a grid of DVC experiments run as Prefect flow runs, aggregated into one report.

    python -m flows.study configs/study_demo.yaml              # this machine, cell by cell
    python -m flows.study configs/study_dffd.yaml --pool gpu   # every GPU of every worker host

Each cell (one seed at one grid point, study/spec.py) is a `study-cell` flow run named by
its overrides: in this process (one machine), or submitted to the `study-cell/<pool>`
deployment of a process work pool, whose workers (one per GPU host, `--limit` = its GPUs)
run it in their own clone with one GPU (orchestration/gpu_slots.py). A cell is skipped when the
shared MLflow store already holds its record (same params and code hash), retried when
it fails or crashes (a worker host that dies stops its heartbeats; the automation this
flow installs marks the run Crashed and the cell goes back to the pool), and finally
every record is aggregated into reports/study.{md,html} (study/report/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from flows.launch import run_flow
from robust_deepfake.config import DEFAULT_PARAMS, ConfigError, load_params, read_yaml
from robust_deepfake.errors import StageError
from robust_deepfake.orchestration.dvc_runner import OrchestrationError, read_stage_graph, stage_env
from robust_deepfake.orchestration.gpu_slots import gpu_slot
from robust_deepfake.study import cell as cells
from robust_deepfake.study import records
from robust_deepfake.study.report.comparisons import StudyRules
from robust_deepfake.study.spec import Cell, StudySpec, cell_hash, expand, load_spec, with_placebo

REPO = Path(__file__).resolve().parents[1]
CHECKOUT_ENV = "ROBUST_DEEPFAKE_CHECKOUT"
CELL_FLOW = "study-cell"
CRASH_AUTOMATION = "robust-deepfake: crash flow runs whose heartbeats stopped"
POLL_S = 5.0


def checkout() -> Path:
    """The clone a cell runs in: $ROBUST_DEEPFAKE_CHECKOUT, else the one holding this file
    (a worker started with PYTHONPATH=<its clone> imports the flows from there)."""
    return Path(os.environ.get(CHECKOUT_ENV) or REPO).resolve()


@flow(name=CELL_FLOW, flow_run_name="{label}")
def study_cell(label: str, cell: dict[str, Any], expected_hash: str, git_remote: str | None = None,
               dvc_remote: str | None = None, parent_run_id: str | None = None, shared: bool = False,
               targets: list[str] | None = None) -> dict | State:
    """One cell: reuse its record if any host finished it, else `dvc exp run --temp` on one
    GPU of this host, push the experiment, and record it in MLflow. A cell that fails for
    a known reason (another checkout, a failed stage, ...) ends Failed with that reason as
    its message, not a traceback."""
    try:
        return _run_cell(label, cell, expected_hash, git_remote, dvc_remote, parent_run_id, shared, targets)
    except (StageError, OrchestrationError, cells.CellFailed) as error:
        return Failed(message=str(error))


def _run_cell(label: str, cell: dict[str, Any], expected_hash: str, git_remote: str | None,
              dvc_remote: str | None, parent_run_id: str | None, shared: bool, targets: list[str] | None) -> dict:
    logger = get_run_logger()
    root = checkout()
    the_cell = Cell.from_dict(cell)
    base = read_yaml(root / DEFAULT_PARAMS)
    params = load_params(root / DEFAULT_PARAMS)
    version = cells.code_version(root)
    found_hash = cell_hash(the_cell.params(base), version)
    if found_hash != expected_hash:
        raise StageError(f"{root}: this checkout computes cell {label!r} as {found_hash} (pipeline code "
                         f"{version}), the study expects {expected_hash}: its params.yaml or stage code differ "
                         "from the study's clone; check out the same commit (git pull) and rerun")
    experiment_id = records.open_store(params, root, shared)
    found = records.find_record(experiment_id, expected_hash)
    if found is not None:
        logger.info(f"{label}: already done in MLflow run {found['mlflow_run_id']} (on {found.get('worker')}); reused")
        return {**found, "reused": True}
    with gpu_slot(os.environ, on_wait=logger.info) as pin:
        env = {**stage_env(), **pin}
        logger.info(f"{label}: running in {root} with CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r}")
        record = cells.execute(root, the_cell, expected_hash, git_remote, dvc_remote, env, on_line=logger.info,
                               targets=targets)
    record["mlflow_run_id"] = records.log_record(experiment_id, record, parent_run_id)
    logger.info(f"{label}: done in {record['device_seconds']} s on {record['worker']}")
    return record


def check_targets(root: Path, targets: list[str], spec_path: str) -> None:
    """Every target is a dvc.yaml stage, and together with what they depend on they write
    every output a cell record is read from."""
    graph = read_stage_graph(root)
    covered = [graph.up_to(target) for target in targets]
    missing = [path for path in cells.OUTPUTS if not any(g.writes(path) for g in covered)]
    if missing:
        raise StageError(f"{spec_path}: targets {targets} do not produce {', '.join(missing)}, which each cell's "
                         "record is read from; use [attack_sweep, cam_iinc], [report] or null (the whole DAG)")


def ensure_crash_detection(within_s: int) -> None:
    """The automation that marks a flow run Crashed when its heartbeats stop (Prefect's own
    recipe for zombie runs: a dead worker host never reports a final state)."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    automation = Automation(
        name=CRASH_AUTOMATION,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {within_s} s: the worker host died or lost its "
                                            "connection")],
    )
    try:
        existing = Automation.read(name=CRASH_AUTOMATION)
    except ValueError:
        existing = None
    if existing is None:
        automation.create()
    elif existing.trigger.within != automation.trigger.within:
        automation.id = existing.id
        automation.update()


def register_cell_deployment(pool: str) -> str:
    """`study-cell/<pool>` in that work pool; module entrypoint, so each worker imports the
    flow from its own clone (PYTHONPATH) and no code storage is needed. Its name."""
    from prefect import deploy
    from prefect.deployments.runner import EntrypointType

    deployment = study_cell.to_deployment(name=pool, entrypoint_type=EntrypointType.MODULE_PATH,
                                          tags=["robust-deepfake", "study"],
                                          description="One study cell: dvc exp run --temp on one GPU of the worker")
    deployment.entrypoint = "flows.study.study_cell"  # not __main__'s, under `python -m flows.study`
    deploy(deployment, work_pool_name=pool, build=False, push=False, ignore_warnings=True, print_next_steps_message=False)
    return f"{CELL_FLOW}/{pool}"


def _run_on_pool(deployment: str, todo: list[tuple[Cell, dict]], spec: StudySpec, logger) -> list[str]:
    """Submit cells to the pool, at most spec.parallelism in flight; resubmit a failed or
    crashed one up to spec.retries times. The messages of cells that never succeeded."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    pending, running, attempts, failures = deque(todo), {}, {}, []
    with get_client(sync_client=True) as client:
        while pending or running:
            while pending and len(running) < spec.parallelism:
                cell, parameters = pending.popleft()
                run = run_deployment(deployment, parameters=parameters, timeout=0, flow_run_name=cell.label)
                running[run.id] = (cell, parameters)
                attempts[cell.label] = attempts.get(cell.label, 0) + 1
                logger.info(f"{cell.label}: submitted (attempt {attempts[cell.label]}), flow run {run.name}")
            time.sleep(POLL_S)
            for run_id, (cell, parameters) in list(running.items()):
                state = client.read_flow_run(run_id).state
                if state is None or not state.is_final():
                    continue
                del running[run_id]
                if state.is_completed():
                    continue
                why = f"{state.type.value}: {state.message or state.name}"
                if attempts[cell.label] <= spec.retries:
                    logger.warning(f"{cell.label}: {why}; resubmitting")
                    pending.append((cell, parameters))
                else:
                    failures.append(f"{cell.label}: {why}")
    return failures


def _run_here(submissions: list[tuple[Cell, dict]], spec: StudySpec, logger) -> list[str]:
    """Each cell as a subflow of this process, one after the other, retried up to
    spec.retries times; returns one line per cell that never completed."""
    failures = []
    for cell, parameters in submissions:
        for attempt in range(spec.retries + 1):
            state = study_cell(**parameters, return_state=True)
            if state.is_completed():
                break
            logger.warning(f"{cell.label}: attempt {attempt + 1} {state.type.value}: {state.message}")
        else:
            failures.append(f"{cell.label}: {state.message}")
    return failures


@flow(name="study", flow_run_name="study {spec_path}")
def study(spec_path: str = "configs/study_demo.yaml", pool: str | None = None, repo: str | None = None,
          report_dir: str = "reports") -> dict:
    """Run every cell of the spec not already done, then aggregate all of them.

    pool: a process work pool; cells go to its `study-cell/<pool>` deployment (registered
        here) and run on its workers. None: cells run here, one after the other.
    """
    from robust_deepfake.study.report import build_study_report

    logger = get_run_logger()
    root = Path(repo).resolve() if repo else REPO
    try:
        spec = load_spec(root / spec_path)
        base = read_yaml(root / DEFAULT_PARAMS)
        params = load_params(root / DEFAULT_PARAMS)
        grid = expand(spec, base)
        if spec.targets:
            check_targets(root, spec.targets, spec_path)
        if pool and not spec.git_remote:
            raise StageError(f"{spec_path}: git_remote: a study on a work pool shares each cell through a git "
                             "remote and a DVC remote; name the git remote (e.g. origin)")
        experiment_id = records.open_store(params, root, shared=pool is not None)
    except (ConfigError, StageError, OrchestrationError) as error:
        return Failed(message=str(error))
    version = cells.code_version(root)
    # cells hold lists (unhashable): they are keyed by label, unique within a study
    hashes = {cell.label: cell_hash(cell.params(base), version) for cell in grid}
    done = {cell.label: records.find_record(experiment_id, hashes[cell.label]) for cell in grid}
    todo = [cell for cell in grid if done[cell.label] is None]
    logger.info(f"study {spec.name}: {len(grid)} cells, {len(grid) - len(todo)} already done (reused), "
                f"{len(todo)} to run {'on pool ' + pool if pool else 'here'}; pipeline code {version}")
    parent = records.start_study_run(experiment_id, spec.name, with_placebo(spec, base).model_dump(mode="json"),
                                     len(grid))
    submissions = [(cell, {"label": cell.label, "cell": cell.to_dict(), "expected_hash": hashes[cell.label],
                           "git_remote": spec.git_remote, "dvc_remote": spec.dvc_remote, "parent_run_id": parent,
                           "shared": pool is not None, "targets": spec.targets}) for cell in todo]
    if pool:
        ensure_crash_detection(spec.heartbeat_timeout_s)
        failures = _run_on_pool(register_cell_deployment(pool), submissions, spec, logger)
    else:
        failures = _run_here(submissions, spec, logger)
    found = [records.find_record(experiment_id, hashes[cell.label]) for cell in grid]
    complete = [record for record in found if record is not None]
    reused = {hashes[cell.label] for cell in grid if done[cell.label] is not None}
    for record in complete:
        record["reused"] = record["cell_hash"] in reused
    judged = grid[0].params(base) if grid else params  # the cells' own report keys (fixed may set them)
    rules = StudyRules(judged.eval.ci, judged.report.min_effect, judged.report.min_clean_auc)
    outputs = build_study_report(with_placebo(spec, base), complete, root / report_dir, rules=rules)
    summary = {"cells": len(grid), "computed": len(complete) - len(reused), "reused": len(reused),
               "missing": len(grid) - len(complete)}
    records.finish_study_run(parent, [p for p in outputs.values() if p.is_file()], summary, bool(failures))
    result = {**summary, "report": str(root / report_dir / "study.html"), "mlflow_run_id": parent}
    if failures:
        return Failed(message=f"{len(failures)} cell(s) failed: " + "; ".join(failures), data=result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="the study spec, e.g. configs/study_demo.yaml")
    parser.add_argument("--pool", help="a Prefect process work pool: cells run on its workers (needs PREFECT_API_URL, "
                                       "an MLflow tracking server and the spec's git_remote)")
    parser.add_argument("--report-dir", default="reports", help="where study.md, study.html and study.json go")
    args = parser.parse_args(argv)
    if args.pool:
        from prefect.settings import get_current_settings

        if not get_current_settings().api.url:
            print("error: --pool needs a Prefect server: export PREFECT_API_URL=http://<host>:4200/api "
                  "(docs/study.md)", file=sys.stderr)
            raise SystemExit(2)
    result = run_flow(study, spec_path=args.spec, pool=args.pool, report_dir=args.report_dir)
    print(f"study done: {result['cells']} cells ({result['computed']} computed, {result['reused']} reused); "
          f"report {result['report']}")


if __name__ == "__main__":
    main()
