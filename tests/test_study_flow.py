"""The study flow on one machine, without training: cells already recorded in MLflow are
reused (not recomputed) and aggregated; a cell that fails is retried, then fails the study
with its error line while the report still covers the finished cells."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from test_study_cells import _record

pytestmark = pytest.mark.slow

SPEC = {"name": "t", "seeds": [0, 1], "grid": {"reg.epsilon": [0.0, 0.5]}, "metric": "acc_pgd", "retries": 1}


@pytest.fixture
def study_repo(tmp_path, monkeypatch):
    """A git checkout with params.yaml and the spec (no DVC: a cell that has to run fails)."""
    root = tmp_path / "repo"
    (root / "configs").mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml"):  # a cell's identity reads both
        shutil.copy(REPO / name, root / name)
    (root / "configs" / "study_t.yaml").write_text(yaml.safe_dump(SPEC))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "t"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ROBUST_DEEPFAKE_CHECKOUT", str(root))
    return root


def _record_cells(root: Path, labels: set[str]) -> None:
    """Record the cells whose label is in `labels`, with the hashes the study will compute."""
    from robust_deepfake.config import load_params, read_yaml
    from robust_deepfake.study import records
    from robust_deepfake.study.cell import code_version
    from robust_deepfake.study.spec import cell_hash, expand, load_spec

    base = read_yaml(root / "params.yaml")
    experiment = records.open_store(load_params(root / "params.yaml"), root, shared=False)
    for cell in expand(load_spec(root / "configs/study_t.yaml"), base):
        if cell.label in labels:
            epsilon = dict(cell.setting)["reg.epsilon"]
            record = _record(cell_hash(cell.params(base), code_version(root)), cell.label, cell.seed, epsilon)
            records.log_record(experiment, {**record, "study": "t", "setting": dict(cell.setting)}, None)


LABELS = {f"reg.epsilon={e} seed={s}" for e in (0.0, 0.5) for s in (0, 1)}


def test_recorded_cells_are_reused_and_aggregated(prefect_harness, study_repo):
    from flows.study import study

    _record_cells(study_repo, LABELS)
    result = study("configs/study_t.yaml", repo=str(study_repo))
    assert result["cells"] == 4 and result["reused"] == 4 and result["computed"] == 0 and result["missing"] == 0
    html = (study_repo / "reports" / "study.html").read_text()
    assert all(label in html for label in LABELS)
    import mlflow

    parent = mlflow.MlflowClient().get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["reused"] == 4
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "report")} >= {
        "report/study.html", "report/study.md", "report/study.json"}


def test_a_failing_cell_is_retried_then_fails_the_study_with_its_error(prefect_harness, study_repo):
    from flows.study import study

    _record_cells(study_repo, LABELS - {"reg.epsilon=0.5 seed=1"})
    state = study("configs/study_t.yaml", repo=str(study_repo), return_state=True)
    assert state.is_failed()
    assert "1 cell(s) failed: reg.epsilon=0.5 seed=1:" in state.message
    assert "dvc exp run" in state.message  # the cell's own error line, not a generic crash
    result = state.result(raise_on_failure=False)
    assert result["missing"] == 1 and result["reused"] == 3
    assert "reg.epsilon=0.0 seed=1" in (study_repo / "reports" / "study.html").read_text()


def test_a_target_that_does_not_produce_the_cell_outputs_is_refused(prefect_harness, study_repo):
    from flows.study import study

    import sys

    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=study_repo, check=True)
    spec = {**SPEC, "targets": ["attack_sweep"]}
    (study_repo / "configs" / "study_t.yaml").write_text(yaml.safe_dump(spec))
    state = study("configs/study_t.yaml", repo=str(study_repo), return_state=True)
    assert state.is_failed() and "targets ['attack_sweep'] do not produce eval/cam_iinc.json" in state.message
    (study_repo / "configs" / "study_t.yaml").write_text(yaml.safe_dump({**SPEC, "targets": ["attack_sweep", "nope"]}))
    state = study("configs/study_t.yaml", repo=str(study_repo), return_state=True)
    assert state.is_failed() and "no stage 'nope'" in state.message
