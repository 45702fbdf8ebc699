"""The parts of a study cell that need no training: what a cell reports (sklearn is the
oracle), its MLflow record (a real sqlite store), one GPU per concurrent cell, and the
study flow reusing recorded cells instead of computing them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from robust_deepfake.bootstrap import bootstrap_counts
from robust_deepfake.config import EvalConfig, read_yaml, validate
from robust_deepfake.orchestration.gpu_slots import gpu_slot, visible_gpus
from robust_deepfake.paths import ModelKey
from robust_deepfake.robustness.sweep import SweepPredictions, summarize_sweep
from robust_deepfake.study import outcome

REPO = Path(__file__).resolve().parents[1]


def _params(**sections):
    raw = read_yaml(REPO / "params.yaml")
    for key, value in sections.items():
        section, leaf = key.split("__")
        raw[section][leaf] = value
    return validate(raw)


def _predictions(seed: int = 0) -> SweepPredictions:
    rng = np.random.default_rng(3)
    n = 40
    labels = np.array([0] * 20 + [1] * 20)
    sources = np.array(["ffhq"] * 20 + ["faceapp_like"] * 10 + ["stylegan_like"] * 10)
    models = [ModelKey("baseline", seed), ModelKey("reg", seed)]
    p = rng.uniform(size=(2, 2, 2, n))
    p[:, :, 0] = p[:, :, 0] * 0.6 + 0.4 * labels  # clean scores carry the label
    return SweepPredictions(models, ["fgsm", "pgd"], [0.0, 1 / 255], np.arange(n), labels, sources, p)


def test_a_cell_reports_its_sweep_and_the_held_out_method_against_every_real():
    params = _params(train__seeds=[0], split__holdout_methods=["stylegan_like"])
    predictions = _predictions()
    sweep, _ = summarize_sweep(predictions, EvalConfig(n_bootstrap=0), ["stylegan_like"])
    measured = outcome.cell_measurements(params, sweep, predictions, cam=None)
    assert measured["attacks"] == ["fgsm", "pgd"] and measured["ref_eps_255"] == 1
    for m, variant in enumerate(("baseline", "reg")):
        clean, pgd = predictions.p_fake[m, 0, 0], predictions.p_fake[m, 1, 1]
        values = measured["variants"][variant]
        assert values["auc_clean"] == pytest.approx(roc_auc_score(predictions.labels, clean))
        assert values["acc_pgd"] == pytest.approx(accuracy_score(predictions.labels, pgd >= 0.5))
        assert values["iinc_stab"] is None  # no CAM: undefined, not 0
        subset = (predictions.labels == 0) | (predictions.sources == "stylegan_like")
        held = measured["heldout"]["stylegan_like"][variant]
        assert held["auc_clean"] == pytest.approx(roc_auc_score(predictions.labels[subset], clean[subset]))
        assert held["acc_pgd"] == pytest.approx(accuracy_score(predictions.labels[subset], pgd[subset] >= 0.5))
        assert held["auc_fgsm"] == pytest.approx(
            roc_auc_score(predictions.labels[subset], predictions.p_fake[m, 0, 1][subset]))
    assert set(measured["heldout"]) == {"stylegan_like"}
    # the test-sampling SE of reg - baseline: the SD over the paired image resamples
    weights = bootstrap_counts(len(predictions.labels), params.eval.n_bootstrap, params.eval.seed)
    right = [((predictions.p_fake[m, 1, 1] >= 0.5) == predictions.labels).astype(float) for m in (0, 1)]
    accuracy = [(weights @ r) / weights.sum(axis=1) for r in right]
    assert measured["test_se"]["reg_baseline"]["acc_pgd"] == pytest.approx(np.std(accuracy[1] - accuracy[0], ddof=1))
    assert set(measured["test_se"]) == {"reg_baseline"}  # no placebo model in this cell
    assert set(measured["test_se"]["reg_baseline"]) == {"acc_clean", "auc_clean", "f1_clean", "acc_fgsm", "auc_fgsm",
                                                        "acc_pgd", "auc_pgd"}
    held_se = measured["heldout_test_se"]["stylegan_like"]["reg_baseline"]
    assert 0 < held_se["auc_clean"] < 0.5 and held_se["acc_pgd"] != measured["test_se"]["reg_baseline"]["acc_pgd"]


def test_one_gpu_per_concurrent_cell(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "2,5", "ROBUST_DEEPFAKE_GPU_LOCKS": str(tmp_path)}
    assert visible_gpus(env) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == [] and visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    waits = []
    with gpu_slot(env) as first, gpu_slot(env) as second:
        assert {first["CUDA_VISIBLE_DEVICES"], second["CUDA_VISIBLE_DEVICES"]} == {"2", "5"}
    with gpu_slot(env) as again:  # both released
        assert again == {"CUDA_VISIBLE_DEVICES": "2"}
    with gpu_slot({"CUDA_VISIBLE_DEVICES": "", "ROBUST_DEEPFAKE_GPU_LOCKS": str(tmp_path)}) as none:
        assert none == {}  # no GPU: the stages run where train.device says
    # a third cell on a 1-GPU host waits until the GPU is free
    single = {"CUDA_VISIBLE_DEVICES": "7", "ROBUST_DEEPFAKE_GPU_LOCKS": str(tmp_path)}
    import threading

    holder = gpu_slot(single)
    holder.__enter__()
    got = []
    thread = threading.Thread(target=lambda: got.append(_take(single, waits)))
    thread.start()
    thread.join(timeout=0.5)
    assert not got and waits  # waiting, and said so
    holder.__exit__(None, None, None)
    thread.join(timeout=10)
    assert got == [{"CUDA_VISIBLE_DEVICES": "7"}]


def _take(env, waits):
    with gpu_slot(env, poll_s=0.05, on_wait=waits.append) as pin:
        return pin


def _record(cell_hash: str, label: str, seed: int, epsilon: float, worker: str = "host-a") -> dict:
    values = {"acc_clean": 0.8, "auc_clean": 0.9, "f1_clean": 0.8, "acc_pgd": 0.1 + epsilon / 10,
              "auc_pgd": 0.2, "iinc_stab": math.nan}
    return {"study": "t", "cell": f"t-{cell_hash[:8]}", "label": label, "seed": seed,
            "setting": {"reg.epsilon": epsilon}, "cell_hash": cell_hash, "reused": False, "worker": worker,
            "host": "h", "cuda_visible_devices": "0", "device": "cpu", "device_seconds": 12.5,
            "dvc_experiment": f"t-{cell_hash[:8]}", "ref_eps_255": 1, "attacks": ["pgd"],
            "variants": {"baseline": {**values, "acc_pgd": 0.1}, "reg": {k: (None if isinstance(v, float) and
                                                                          math.isnan(v) else v)
                                                                      for k, v in values.items()}},
            "heldout": {}}


@pytest.fixture
def store(empty_mlflow_db, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{empty_mlflow_db}")
    mlflow.set_tracking_uri(f"sqlite:///{empty_mlflow_db}")
    return tmp_path


def test_a_record_round_trips_through_mlflow_and_only_finished_ones_count(store):
    import mlflow

    from robust_deepfake.study import records

    experiment = mlflow.create_experiment("robust-deepfake", artifact_location=(store / "art").as_uri())
    parent = records.start_study_run(experiment, "t", {"name": "t"}, 1)
    assert records.find_record(experiment, "a" * 16) is None
    run_id = records.log_record(experiment, _record("a" * 16, "reg.epsilon=0.5 seed=0", 0, 0.5), parent)
    found = records.find_record(experiment, "a" * 16)
    assert found["mlflow_run_id"] == run_id and found["label"] == "reg.epsilon=0.5 seed=0"
    assert found["variants"]["reg"]["iinc_stab"] is None
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["study"] == "t"
    assert run.data.params == {"reg.epsilon": "0.5", "seed": "0"}
    assert run.data.metrics["reg/acc_pgd"] == pytest.approx(0.15) and "reg/iinc_stab" not in run.data.metrics
    # an unfinished run with the same hash (a cell killed while logging) is not a result
    client = mlflow.MlflowClient()
    client.create_run(experiment, tags={records.HASH_TAG: "b" * 16})
    assert records.find_record(experiment, "b" * 16) is None


def test_a_cells_code_identity_follows_the_stage_dependencies_not_the_commit(tmp_path):
    import subprocess

    from robust_deepfake.study.cell import code_version

    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages:\n  a:\n    cmd: python src/a.py\n    deps: [src, data/raw]\n"
                                   "    outs: [out]\n  b:\n    foreach: [1]\n    do:\n      cmd: x\n"
                                   "      deps: [stages/b.py]\n      outs: [\"o${item}\"]\n")
    (root / "src" / "a.py").write_text("print(1)\n")
    (root / "README.md").write_text("docs\n")
    (root / "stages").mkdir()
    (root / "stages" / "b.py").write_text("pass\n")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "one")
    first = code_version(root)
    (root / "README.md").write_text("more docs\n")
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", "docs")
    assert code_version(root) == first  # a new commit that changes no dependency
    (root / "src" / "a.py").write_text("print(2)\n")
    edited = code_version(root)
    assert edited != first  # an uncommitted edit of a dependency counts
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", "code")
    assert code_version(root) == edited  # and is the same once committed
    (root / "stages" / "b.py").write_text("pass  # changed\n")
    assert code_version(root) != edited  # deps of foreach stages too
