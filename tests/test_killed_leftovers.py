"""What a killed training leaves behind, closed by the next stage that passes the store
check (MlflowTracker.require -> runs.close_dead_trainings) once the training's outs are
back (restored from DVC's run cache): its RUNNING MLflow run becomes KILLED and its resume
checkpoint is removed when the outs hold the same training; a checkpoint of other params
stays for a resume, and nothing is touched while the outs are absent (a training DVC is
running, or one still to run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robust_deepfake.config import validate
from robust_deepfake.paths import RUN_MARKER, ModelKey, TrainOutputs, resume_checkpoint
from robust_deepfake.tracking.tracker import MlflowTracker

pytestmark = pytest.mark.usefixtures("own_mlflow_stores")


def _killed_training(root: Path, key: ModelKey, checkpoint_fingerprint: str, outs_fingerprint: str | None) -> str:
    """A RUNNING run named by the marker, a checkpoint and (when given) the restored outs."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = client.create_run(client.get_experiment_by_name("Default").experiment_id).info.run_id
    checkpoint = resume_checkpoint(root, key)
    checkpoint.parent.mkdir(parents=True)
    torch.save({"fingerprint": checkpoint_fingerprint, "epoch": 2, "model": {"w": torch.zeros(3)}}, checkpoint)
    (checkpoint.parent / RUN_MARKER).write_text(json.dumps({"run_id": run_id}))
    if outs_fingerprint is not None:
        meta = TrainOutputs.of(root, key).meta
        meta.parent.mkdir(parents=True)
        meta.write_text(json.dumps({"fingerprint": outs_fingerprint}))
    return run_id


def test_restored_outs_close_the_run_and_remove_the_stale_checkpoint(empty_mlflow_db, tmp_path, capsys):
    from mlflow import MlflowClient

    tracker = MlflowTracker(validate({}), tmp_path)
    tracker.require()  # configures the store the runs below go to
    same = _killed_training(tmp_path, ModelKey("baseline", 0), "abc", outs_fingerprint="abc")
    other = _killed_training(tmp_path, ModelKey("reg", 0), "old-params", outs_fingerprint="abc")
    running = _killed_training(tmp_path, ModelKey("reg", 1), "abc", outs_fingerprint=None)

    tracker.require()
    client = MlflowClient()
    assert client.get_run(same).info.status == "KILLED"
    assert not resume_checkpoint(tmp_path, ModelKey("baseline", 0)).exists()
    assert not (resume_checkpoint(tmp_path, ModelKey("baseline", 0)).parent / RUN_MARKER).exists()
    assert client.get_run(other).info.status == "KILLED"  # dead: its outs are in place
    assert resume_checkpoint(tmp_path, ModelKey("reg", 0)).exists()  # other params: kept for a resume
    assert client.get_run(running).info.status == "RUNNING"  # no outs: may be training right now
    assert resume_checkpoint(tmp_path, ModelKey("reg", 1)).exists()
    out = capsys.readouterr().out
    assert f"note: MLflow run {same} of a killed training of baseline-seed0 marked KILLED" in out
    assert "note: removed " in out and "last.pt (0 MB): the resume state of a killed training" in out

    tracker.require()  # nothing left to do: no second note
    assert "note:" not in capsys.readouterr().out
