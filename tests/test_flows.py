"""The Prefect flows with the real prefect, dvc and mlflow (the runner and the figures they
use without a server: test_orchestration.py, test_key_metrics.py).

* the pipeline flow: DAG order, streamed logs, retries, failures and concurrency on a toy
  DVC repo (seconds), and overrides -> a DVC experiment on a copy of the micro repo;
* the re-evaluation flow against the micro repo's registry: a new run per alias, new eps
  picked up, no retraining, and a drop beyond reevaluate.max_drop failing the flow;
* the served deployments: the cron comes from params.yaml.

One Prefect test server for the whole session (conftest's `prefect_harness`, ~10 s to start).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import REPO, clean_env, dvc, run
from toy_dvc_repo import calls, make_toy_repo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("own_mlflow_stores")]


def copy_repo(source: Path, dest: Path) -> Path:
    """A private copy of the micro repo (the session fixture must stay untouched). Its
    MLflow database moves along; registered artifacts stay readable at the original."""
    return Path(shutil.copytree(source, dest, symlinks=True))


# --- the pipeline flow on the toy repo ----------------------------------------------------


def _task_runs_and_logs(flow_run_id) -> tuple[list[str], list[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are sent in the background: wait for them
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    names = [t.name for t in sorted(task_runs, key=lambda t: t.start_time or t.expected_start_time)]
    return names, [log.message for log in logs]


def test_pipeline_runs_each_stage_as_a_task_in_dag_order(prefect_harness, tmp_path):
    from flows.pipeline import pipeline

    root = make_toy_repo(tmp_path / "toy")
    state = pipeline(repo=str(root), return_state=True)
    assert state.is_completed(), state.message
    assert [name for name, _ in calls(root)] == ["prepare", "right", "left", "report"]
    task_names, messages = _task_runs_and_logs(state.state_details.flow_run_id)
    assert task_names == ["prepare", "right", "left", "report"]
    assert "step left: hello from the stage" in messages  # stage output streamed into Prefect logs

    again = pipeline(repo=str(root), return_state=True)  # DVC skips what is up to date
    assert again.is_completed()
    assert len(calls(root)) == 4
    assert "up to date" in dvc("status", cwd=root).stdout


def test_transient_failures_are_retried_real_errors_fail_naming_the_stage(prefect_harness, tmp_path):
    from flows.pipeline import pipeline

    root = make_toy_repo(tmp_path / "toy", flags={"right": "--transient-once", "left": "--fail"})
    state = pipeline(repo=str(root), retry_delay_s=0, return_state=True)
    assert state.is_failed()
    assert state.message == (
        "stage 'left' failed: error: params.yaml: train.lr: stage left refuses this value"
    )
    called = [name for name, _ in calls(root)]
    assert called == ["prepare", "right", "right", "left"]  # one retry of the transient failure, none of the real one
    assert "report" not in called


def _flow_command(code: str, cwd: Path):
    """`python -c <code>` in this checkout, against the session's Prefect server."""
    from prefect.settings import get_current_settings

    env = clean_env(cwd)
    env["PREFECT_API_URL"] = get_current_settings().api.url
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'src'}"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_failing_stage_ends_the_command_with_its_reason_and_no_traceback(prefect_harness, tmp_path):
    root = make_toy_repo(tmp_path / "toy", flags={"left": "--fail"})
    done = _flow_command("from flows.launch import run_flow\nfrom flows.pipeline import pipeline\n"
                         f"run_flow(pipeline, repo={str(root)!r}, retry_delay_s=0)", root)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert ("error: flow 'pipeline' failed: stage 'left' failed: error: params.yaml: train.lr: stage left "
            "refuses this value") in done.stderr
    assert "Traceback" not in output, output


def test_reevaluation_without_a_registered_model_ends_with_the_reason_and_no_traceback(prefect_harness, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    done = _flow_command("from flows.launch import run_flow\nfrom flows.reevaluate import reevaluate\n"
                         f"run_flow(reevaluate, repo={str(root)!r}, aliases=['champion'])", root)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "error: flow 'reevaluate' failed: @champion: " in done.stderr, output
    assert "Traceback" not in output, output


def test_several_devices_run_independent_stages_at_once(prefect_harness, tmp_path):
    from flows.pipeline import pipeline

    flags = {"left": "--rendezvous right", "right": "--rendezvous left"}
    root = make_toy_repo(tmp_path / "toy", flags=flags)
    state = pipeline(repo=str(root), device="cuda:0,cuda:1", return_state=True)
    assert state.is_completed(), state.message
    devices = dict(calls(root))
    assert devices["prepare"] == "0"
    assert {devices["right"], devices["left"]} == {"0", "1"}  # one device each, both running at once
    assert "up to date" in dvc("status", cwd=root).stdout  # dvc.lock has every stage


def test_overrides_make_a_dvc_experiment(prefect_harness, tmp_path):
    from flows.pipeline import pipeline

    root = make_toy_repo(tmp_path / "toy")
    result = pipeline(repo=str(root), overrides=["train.lr=0.001"], experiment_name="lower-lr")
    assert result["experiment"] == "lower-lr"
    shown = json.loads(dvc("exp", "show", "--json", cwd=root).stdout)
    experiments = [exp for rev in shown for exp in rev.get("experiments") or []]
    names = {exp["name"]: exp for exp in experiments}
    assert "lower-lr" in names, shown
    params = names["lower-lr"]["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["train"]["lr"] == 0.001


def test_bad_overrides_targets_and_devices_fail_before_any_stage(prefect_harness, tmp_path):
    from flows.pipeline import pipeline

    root = make_toy_repo(tmp_path / "toy")
    original = (root / "params.yaml").read_bytes()
    for kwargs, expected in [
        ({"overrides": ["train.lr=-1"]}, "train.lr: Input should be greater than 0"),
        ({"overrides": ["train.lrr=0.1"]}, "lrr"),
        ({"target": "nope"}, "no stage 'nope'"),
        ({"device": "gpu0"}, "device: expected"),
    ]:
        state = pipeline(repo=str(root), return_state=True, **kwargs)
        assert state.is_failed() and expected in state.message, (kwargs, state.message)
    assert (root / "params.yaml").read_bytes() == original
    assert calls(root) == []


# --- the pipeline flow on the micro repo ----------------------------------------------------


def test_pipeline_on_micro_repo_override_and_target(prefect_harness, micro_repo, tmp_path):
    from flows.pipeline import pipeline

    from robust_deepfake.paths import CamOutputs, SweepOutputs
    from robust_deepfake.robustness.sweep import SweepMetrics

    root = copy_repo(micro_repo, tmp_path / "repo")
    cam_before = CamOutputs.at(root).metrics.read_bytes()
    state = pipeline(repo=str(root), overrides=["attack.attacks=[fgsm]", "report.select_by=mean_attack_accuracy"],
                     target="attack_sweep", return_state=True)
    assert state.is_completed(), state.message
    metrics = state.result()
    # the worst-case ensemble (attack.ensemble.enabled) is swept beside the configured attacks
    assert SweepMetrics.load(SweepOutputs.at(root).metrics).attacks == ["fgsm", "ensemble"]
    assert metrics["robustness_by"] == "ensemble+fgsm accuracy"  # no PGD configured: the mean over every attack
    assert 0 <= metrics["reg/robustness"] <= 1
    assert 0 <= metrics["baseline/val_auc"] <= 1
    assert "champion" not in metrics and "reg/pgd_accuracy" not in metrics  # the report is past the target
    assert CamOutputs.at(root).metrics.read_bytes() == cam_before  # past the target: not run
    listed = run([sys.executable, "-m", "dvc", "exp", "show", "--no-pager", "--csv"], root).stdout
    assert metrics["experiment"] in listed


# --- the re-evaluation flow ----------------------------------------------------------------


def _registry(root: Path):
    """The copy's registry with @champion -> reg seed 0, @challenger -> baseline seed 0
    (the report stage sets them in a full run; set here so the test does not depend on
    its verdict)."""
    import mlflow
    from mlflow import MlflowClient

    from robust_deepfake.config import load_params
    from robust_deepfake.tracking.store import configure
    from robust_deepfake.paths import ModelKey, read_run_record

    params = load_params(root / "params.yaml")
    configure(params.tracking, root)
    client = MlflowClient()
    name = params.tracking.registered_model
    versions = {v: read_run_record(root, ModelKey(v, params.train.seeds[0]))["registered_version"]
                for v in ("baseline", "reg")}
    client.set_registered_model_alias(name, "champion", versions["reg"])
    client.set_registered_model_alias(name, "challenger", versions["baseline"])
    return mlflow, client, name, versions


def _set_params(root: Path, **sections) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_reevaluation_logs_runs_picks_up_new_eps_and_never_retrains(prefect_harness, micro_repo, tmp_path):
    from flows.reevaluate import reevaluate
    from robust_deepfake.config import load_params
    from robust_deepfake.paths import TrainOutputs, model_keys

    root = copy_repo(micro_repo, tmp_path / "repo")
    mlflow, client, name, versions = _registry(root)
    _set_params(root, attack={"eps": ["1/255", "2/255", "4/255"]})  # a new eps since training
    keys = model_keys(load_params(root / "params.yaml").train.seeds)
    weights = {key: TrainOutputs.of(root, key).weights.read_bytes() for key in keys}
    n_versions = len(client.search_model_versions(f"name = '{name}'"))

    result = reevaluate(repo=str(root))

    assert set(result) == {"champion", "challenger"}
    for alias, variant in (("champion", "reg"), ("challenger", "baseline")):
        outcome = result[alias]
        run_ = client.get_run(outcome["run_id"])
        assert run_.data.tags["reevaluation"] == "true"
        assert run_.data.tags["model_version"] == versions[variant]
        assert run_.data.tags["alias"] == alias
        assert outcome["model"] == f"{variant}-seed{keys[0].seed}"
        steps = {m.step for m in client.get_metric_history(outcome["run_id"], "reeval_vs_eps255/pgd/accuracy")}
        assert steps == {1, 2, 4}  # eps in grey levels, as on the training run
        assert {m.step for m in client.get_metric_history(outcome["run_id"], "reeval_vs_eps255/clean/accuracy")} == {0}
        assert "reeval_cam_vs_eps255/pgd/iinc_stability" in run_.data.metrics
        version = client.get_model_version(name, versions[variant])
        assert version.tags["last_reevaluation_run_id"] == outcome["run_id"]
        # first re-evaluation: compared with the sweep logged on the training run, on 1/255 and 2/255
        assert outcome["previous_run_id"] == version.run_id
        assert outcome["drop"] == pytest.approx(0.0, abs=0.05)
    found = mlflow.search_runs(filter_string="tags.reevaluation = 'true'", search_all_experiments=True)
    assert len(found) == 2
    assert len(client.search_model_versions(f"name = '{name}'")) == n_versions  # nothing retrained
    assert {key: TrainOutputs.of(root, key).weights.read_bytes() for key in keys} == weights


def test_a_robustness_drop_fails_the_flow_with_a_readable_message(prefect_harness, micro_repo, tmp_path):
    from mlflow.entities import Metric

    from flows.reevaluate import reevaluate

    root = copy_repo(micro_repo, tmp_path / "repo")
    _, client, name, versions = _registry(root)
    _set_params(root, attack={"attacks": ["pgd"], "eps": ["1/255"]}, cam={"num_samples": 4})
    # a previous evaluation that saw a perfectly robust model
    experiment_id = client.get_experiment_by_name("robust-deepfake").experiment_id
    previous = client.create_run(experiment_id, run_name="earlier", tags={"reevaluation": "true"}).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(previous, metrics=[Metric("reeval_vs_eps255/pgd/auc", 1.0, now, 1)])  # report.select_by: pgd_auc
    client.set_model_version_tag(name, versions["reg"], "last_reevaluation_run_id", previous)

    state = reevaluate(repo=str(root), aliases=["champion"], return_state=True)

    assert state.is_failed()
    message = state.message
    assert message.startswith(f"robustness drop: @champion ({name} v{versions['reg']}): mean pgd auc over eps [1/255]")
    assert f"previous evaluation 1.000 (run {previous})" in message
    assert "> reevaluate.max_drop 0.05" in message
    run_id = client.get_model_version(name, versions["reg"]).tags["last_reevaluation_run_id"]
    assert run_id != previous and run_id in message  # the failing evaluation is logged too
    assert client.get_run(run_id).data.tags["robustness_status"] == "dropped"


def test_a_missing_alias_fails_with_what_to_do(prefect_harness, micro_repo, tmp_path):
    from flows.reevaluate import reevaluate

    root = copy_repo(micro_repo, tmp_path / "repo")
    _registry(root)
    state = reevaluate(repo=str(root), aliases=["nightly"], return_state=True)
    assert state.is_failed()
    assert "has no alias @nightly" in state.message and "@champion" in state.message


# --- serving ---------------------------------------------------------------------------------


def test_deployments_take_the_schedule_from_params(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.serve import build_deployments

    root = tmp_path / "repo"
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["reevaluate"]["cron"] = "17 5 * * 2"
    (root / "params.yaml").write_text(yaml.safe_dump(params))

    pipeline_deployment, reevaluate_deployment = build_deployments(root)
    assert (pipeline_deployment.name, reevaluate_deployment.name) == ("on-demand", "scheduled")
    assert pipeline_deployment.schedules in (None, [])
    assert [s.schedule.cron for s in reevaluate_deployment.schedules] == ["17 5 * * 2"]
    for deployment in (pipeline_deployment, reevaluate_deployment):
        deployment.apply()  # what `python -m flows.serve` registers
    with get_client(sync_client=True) as client:
        registered = client.read_deployment_by_name("reevaluate/scheduled")
        assert [s.schedule.cron for s in registered.schedules] == ["17 5 * * 2"]
        assert client.read_deployment_by_name("pipeline/on-demand").entrypoint.endswith("flows/pipeline.py:pipeline")
    pooled = build_deployments(root, checkout=Path("/srv/robust-deepfake"))
    assert [d.entrypoint for d in pooled] == ["flows.pipeline.pipeline", "flows.reevaluate.reevaluate"]
    assert {d.job_variables["working_dir"] for d in pooled} == {"/srv/robust-deepfake"}

    params["reevaluate"]["cron"] = "every monday"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit):
        build_deployments(root)
