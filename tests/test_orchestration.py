"""The DVC runner the pipeline flow uses, without Prefect: the stage graph comes from DVC
(not the order of dvc.yaml), the project's DAG and outs are where paths.py says, devices
map to CUDA_VISIBLE_DEVICES, and a failed stage is named with its error line."""

from __future__ import annotations

import pytest
import yaml

from helpers import REPO
from robust_deepfake.config import load_params
from robust_deepfake.orchestration.dvc_runner import (
    OrchestrationError,
    StageFailed,
    check_devices,
    device_env,
    parse_devices,
    read_stage_graph,
)
from robust_deepfake.paths import VARIANTS, ReportOutputs, SweepOutputs, TrainOutputs, model_keys
from toy_dvc_repo import make_toy_repo


def test_stage_graph_follows_dvc_not_the_file_order(tmp_path):
    graph = read_stage_graph(make_toy_repo(tmp_path / "toy"))
    assert graph.stages == ("prepare", "right", "left", "report")
    assert graph.levels() == [["prepare"], ["right", "left"], ["report"]]
    assert graph.up_to("left").stages == ("prepare", "left")
    assert graph.outs["left"] == {"out/left.txt"}
    assert graph.up_to("left").writes("out/prepare.txt") and not graph.up_to("left").writes("out/report.txt")
    with pytest.raises(OrchestrationError, match="no stage 'nope'; stages: prepare, right, left, report"):
        graph.up_to("nope")


def test_the_project_dag_is_read_from_dvc_yaml():
    graph = read_stage_graph(REPO)
    seeds = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["seeds"]
    declared = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert sorted(graph.stages) == sorted(declared)
    assert graph.stages[:2] == ("check_params", "split")
    for stage in graph.stages:  # an invalid params.yaml stops every target before its stage
        assert graph.up_to(stage).stages[0] == "check_params", stage
    # one stage per variant (every seed), side by side: what the flow spreads over devices
    assert {f"train_{variant}" for variant in VARIANTS} in [set(level) for level in graph.levels()]
    assert graph.up_to("train_placebo").stages == ("check_params", "split", "train_placebo")
    # the outputs key_metrics reads are where paths.py says
    for key in model_keys(seeds):
        produced = TrainOutputs.of(REPO, key)
        for path in (produced.model_dir, produced.metrics, produced.plot):
            assert graph.up_to(f"train_{key.variant}").writes(path.relative_to(REPO).as_posix()), path
    for path in (SweepOutputs.at(REPO).metrics, ReportOutputs.at(REPO).metrics, ReportOutputs.at(REPO).verdict):
        assert graph.writes(path.relative_to(REPO).as_posix()), path
    assert not graph.up_to("attack_sweep").writes(ReportOutputs.at(REPO).metrics.relative_to(REPO).as_posix())


def test_devices_and_failure_messages():
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
