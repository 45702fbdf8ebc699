"""The Prefect flows with the real prefect, dvc and mlflow.

* the pipeline flow: DAG order, streamed logs, retries, failures and concurrency on a toy
  DVC repo (seconds), and overrides -> a DVC experiment on a copy of the micro repo;
* the re-evaluation flow against the micro repo's registry: a new run per alias, new eps
  picked up, no retraining, and a drop beyond reevaluate.max_drop failing the flow;
* the served deployments: the cron comes from params.yaml.

One Prefect test server for the whole session (conftest's `prefect_harness`, ~10 s to start).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import REPO, dvc, run
from toy_dvc_repo import calls, make_toy_repo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("own_mlflow_stores")]


def copy_repo(source: Path, dest: Path) -> Path:
    """A private copy of the micro repo (the session fixture must stay untouched). Its
    MLflow database moves along; registered artifacts stay readable at the original."""
    return Path(shutil.copytree(source, dest, symlinks=True))


# --- the library parts that need no server -------------------------------------------


def test_stage_graph_follows_dvc_not_the_file_order(tmp_path):
    from robust_deepfake.orchestration.dvc_runner import OrchestrationError, read_stage_graph

    graph = read_stage_graph(make_toy_repo(tmp_path / "toy"))
    assert graph.stages == ("prepare", "right", "left", "report")
    assert graph.levels() == [["prepare"], ["right", "left"], ["report"]]
    assert graph.up_to("left").stages == ("prepare", "left")
    assert graph.outs["left"] == {"out/left.txt"}
    assert graph.up_to("left").writes("out/prepare.txt") and not graph.up_to("left").writes("out/report.txt")
    with pytest.raises(OrchestrationError, match="no stage 'nope'; stages: prepare, right, left, report"):
        graph.up_to("nope")


def test_the_project_dag_is_read_from_dvc_yaml():
    from robust_deepfake.orchestration.dvc_runner import read_stage_graph
    from robust_deepfake.paths import ReportOutputs, SweepOutputs, TrainOutputs, model_keys

    graph = read_stage_graph(REPO)
    seeds = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["seeds"]
    declared = []
    for name, spec in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        if "foreach" in spec:  # DVC expands it: one stage per seed, `train_reg@1`
            assert spec["foreach"] == "${train.seeds}"
            declared += [f"{name}@{seed}" for seed in seeds]
        else:
            declared.append(name)
    assert sorted(graph.stages) == sorted(declared)
    assert graph.stages[0] == "split"
    keys = model_keys(seeds)
    assert {f"train_{k.variant}@{k.seed}" for k in keys} in [set(level) for level in graph.levels()]
    assert graph.up_to(f"train_reg@{seeds[-1]}").stages == ("split", f"train_reg@{seeds[-1]}")
    # the outputs key_metrics reads are where paths.py says
    for key in keys:
        produced = TrainOutputs.of(REPO, key)
        assert graph.outs[f"train_{key.variant}@{key.seed}"] >= {
            p.relative_to(REPO).as_posix() for p in (produced.model_dir, produced.metrics, produced.plot)}
    for path in (SweepOutputs.at(REPO).metrics, ReportOutputs.at(REPO).metrics, ReportOutputs.at(REPO).verdict):
        assert graph.writes(path.relative_to(REPO).as_posix()), path
    assert not graph.up_to("attack_sweep").writes(ReportOutputs.at(REPO).metrics.relative_to(REPO).as_posix())


def test_devices_and_failure_messages():
    from robust_deepfake.config import load_params
    from robust_deepfake.orchestration.dvc_runner import (
        OrchestrationError, StageFailed, check_devices, device_env, parse_devices,
    )

    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert device_env("cuda:1") == {"CUDA_VISIBLE_DEVICES": "1"}
    assert device_env("cpu") == {"CUDA_VISIBLE_DEVICES": ""}
    assert device_env("auto") == {}
    with pytest.raises(OrchestrationError, match="device: expected"):
        parse_devices("gpu0")
    pinned = load_params(REPO / "params.yaml").model_copy(
        update={"train": load_params(REPO / "params.yaml").train.model_copy(update={"device": "cuda:1"})}
    )
    with pytest.raises(OrchestrationError, match="train.device is 'cuda:1'"):
        check_devices(pinned, ["cuda:0"])
    failed = StageFailed("cam_iinc", 1, ["cam_iinc: 8 images", "error: cam.target_layer: no layer 'x'",
                                         "ERROR: failed to reproduce 'cam_iinc'"])
    assert str(failed) == "stage 'cam_iinc' failed: error: cam.target_layer: no layer 'x'"
    assert not failed.transient
    assert StageFailed("train_reg", 1, ["sqlite3.OperationalError: database is locked"]).transient


def _sweep_metrics():
    """A hand-made SweepMetrics: two seeds per variant, pgd and fgsm at 1/255 and 2/255."""
    from robust_deepfake.paths import model_keys
    from robust_deepfake.robustness.sweep import SweepEntry, SweepMetrics

    entries = []
    for m, key in enumerate(model_keys([0, 1])):
        entries.append(SweepEntry(key, "clean", 0.0, 0.9 - 0.01 * m, 0.9, 0.95, 0.0, 10))
        for a, attack in enumerate(("pgd", "fgsm")):
            for e, eps in enumerate((1 / 255, 2 / 255)):
                accuracy = 0.7 - 0.1 * e - 0.05 * a + 0.02 * m
                entries.append(SweepEntry(key, attack, eps, accuracy, accuracy, accuracy + 0.1, 0.2, 10))
    return SweepMetrics(entries, 0.95, True)


def test_key_metrics_reads_the_report_else_the_stage_outputs(tmp_path):
    from robust_deepfake.io import write_json
    from robust_deepfake.orchestration.dvc_runner import StageGraph
    from robust_deepfake.pipeline.key_metrics import key_metrics
    from robust_deepfake.paths import ModelKey, ReportOutputs, SweepOutputs, TrainOutputs, model_keys

    root = tmp_path / "repo"
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["seeds"] = [0, 1]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert key_metrics(root) == {}  # nothing run yet
    for m, key in enumerate(model_keys([0, 1])):
        write_json(TrainOutputs.of(root, key).metrics, {"val_auc": 0.8 + 0.1 * key.seed + 0.01 * m})
    write_json(TrainOutputs.of(root, ModelKey("reg", 7)).metrics, {"val_auc": 0.0})  # not in train.seeds
    _sweep_metrics().save(SweepOutputs.at(root).metrics)

    found = key_metrics(root)
    assert found["baseline/val_auc"] == pytest.approx(0.85 + 0.005)
    assert found["reg/val_auc"] == pytest.approx(0.85 + 0.025)
    assert found["robustness_by"] == "pgd auc"  # report.select_by
    assert found["baseline/robustness"] == pytest.approx(0.75 + 0.01)  # pgd AUC at 1/255 and 2/255, seed mean
    assert found["reg/clean_accuracy"] == pytest.approx(0.875)
    assert "champion" not in found and "reg/acc_pgd" not in found

    report = ReportOutputs.at(root)
    headline = {"seeds": 2, "ref_eps_255": 1.0, "acc_clean": {"baseline": 0.6, "reg": 0.6},
                "auc_clean": {"baseline": 0.7, "reg": 0.7}, "acc_pgd": {"baseline": 0.4, "reg": 0.4},
                "auc_pgd": {"baseline": 0.3, "reg": 0.3}, "iinc_stab": {"baseline": float("nan"), "reg": float("nan")},
                "pgd_acc_diff": {"mean": 0.0, "lo": -0.1, "hi": 0.1}}
    write_json(report.metrics, headline)
    write_json(report.verdict, {"differences": [], "decision": {"champion": "reg-seed1", "challenger": "baseline-seed0"}})
    found = key_metrics(root)
    assert (found["reg/acc_pgd"], found["baseline/auc_clean"], found["champion"]) == (0.4, 0.7, "reg-seed1")
    assert found["reg/val_auc"] == pytest.approx(0.875)  # not in the headline: from the train metrics
    assert "reg/iinc_stab" not in found and "reg/iinc_stability" not in found  # NaN, and no cam_iinc.json

    # a run up to attack_sweep: the report's files are from an earlier run
    covered = {f"train_{k.variant}@{k.seed}": frozenset({TrainOutputs.of(root, k).metrics.relative_to(root).as_posix()})
               for k in model_keys([0, 1])}
    covered["attack_sweep"] = frozenset({"eval/attack_sweep.json"})
    partial = key_metrics(root, StageGraph(tuple(covered), {s: frozenset() for s in covered}, covered))
    assert "champion" not in partial and "reg/acc_pgd" not in partial
    assert partial["reg/val_auc"] == pytest.approx(0.875)


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
    state = pipeline(repo=str(root), overrides=["attack.attacks=[fgsm]"], target="attack_sweep", return_state=True)
    assert state.is_completed(), state.message
    metrics = state.result()
    assert SweepMetrics.load(SweepOutputs.at(root).metrics).attacks == ["fgsm"]
    assert metrics["robustness_by"] == "fgsm accuracy"  # no PGD configured: the mean over all attacks
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
