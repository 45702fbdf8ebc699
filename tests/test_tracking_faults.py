"""The MLflow store failing: an unreachable server fails a stage in seconds with one line,
a read-only store too; a training killed mid-run leaves no RUNNING run behind, and the
resumed run holds every epoch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from helpers import clean_env
from robust_deepfake.paths import CHECKPOINT_DIR

REPO = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is: nothing listens there


@pytest.mark.parametrize("stage", [["stages/train.py", "--variant", "baseline"],
                                   ["stages/attack_sweep.py"], ["stages/report.py"]])
def test_an_unreachable_tracking_server_fails_the_stage_in_seconds(stage, tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    env = {**clean_env(REPO), "MLFLOW_TRACKING_URI": uri}
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        env.pop(name, None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, *stage, "--params", "params.yaml"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: MLflow tracking server at {uri} unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    # a hang detector, not a speed test: MLflow's own retries took ~250 s; ours fail at the
    # first refused connection, so what remains is importing torch (~8 s on an idle 2-core CPU)
    assert elapsed <= 60, f"took {elapsed:.1f} s"


def test_http_retries_and_timeouts_are_bounded_unless_the_user_set_them(monkeypatch, tmp_path):
    """A server that accepts no connection and refuses none (a firewall drop) costs at most
    MLFLOW_HTTP_REQUEST_TIMEOUT per try: ours are 5 s and 1 retry; the user's values win."""
    from robust_deepfake.config import TrackingConfig
    from robust_deepfake.errors import StageError
    from robust_deepfake.tracking import store

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(store, "_exported", None)
    with pytest.raises(StageError, match="unreachable"):
        store.require_store(TrackingConfig(), tmp_path)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"


def test_a_read_only_sqlite_store_is_one_line(empty_mlflow_db, tmp_path, monkeypatch):
    """As root every file is writable, so sqlite's own read-only mode stands in for a
    read-only file: the store is opened, and the first write fails."""
    from robust_deepfake.config import TrackingConfig
    from robust_deepfake.tracking import store

    database = empty_mlflow_db
    env = {**clean_env(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///file:{database}?mode=ro&uri=true"}
    (tmp_path / "params.yaml").write_text("{}\n")
    script = textwrap.dedent("""
        from pathlib import Path
        from robust_deepfake.config import Params
        from robust_deepfake.tracking import store
        from robust_deepfake.stage_kit import run_stage_script

        def body(params):  # what every tracked stage does first, then its first write
            store.require_store(params.tracking, Path.cwd())
            store.ensure_experiment("new-experiment", Path.cwd())

        run_stage_script(None, body, str, argv=["--params", "params.yaml"])
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: MLflow: ") and "readonly" in result.stderr.lower()
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

    # where the OS says read-only (a non-root user), the check before any work says so
    monkeypatch.setattr(store.os, "access", lambda path, mode: False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    from robust_deepfake.errors import StageError

    with pytest.raises(StageError, match="the MLflow store is read-only"):
        store.require_store(TrackingConfig(), tmp_path)


_TRACKED_TRAIN = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from robust_deepfake.config import load_params
    from robust_deepfake.paths import ModelKey
    from robust_deepfake.pipeline.train import train_model
    from robust_deepfake.tracking.register import MlflowTrainingTracker

    root = Path(sys.argv[1])
    params = load_params(root / "params.yaml")
    train_model(params, ModelKey("baseline", 0), root, MlflowTrainingTracker(params, root))
    """
)


@pytest.mark.slow
def test_a_killed_training_run_is_closed_and_the_resumed_run_holds_every_epoch(tiny_raw, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from robust_deepfake.config import load_params
    from robust_deepfake.paths import ModelKey
    from robust_deepfake.pipeline.split import split
    from robust_deepfake.pipeline.train import train_model
    from robust_deepfake.tracking.register import MlflowTrainingTracker

    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "data" / "raw").symlink_to(tiny_raw)  # data.raw_dir stays inside the repository
    raw = {"data": {"raw_dir": "data/raw", "splits_dir": str(root / "data" / "splits"), "image_size": 32},
           "train": {"seeds": [0], "epochs": 3, "batch_size": 12, "patience": 3, "device": "cpu", "num_threads": 1}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(root / "params.yaml")
    monkeypatch.chdir(root)  # the stages run from the repository
    split(params, root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**clean_env(root), "MLFLOW_TRACKING_URI": uri}
    process = subprocess.Popen([sys.executable, "-c", _TRACKED_TRAIN, str(root)], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if line.startswith("epoch 2/3:"):
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert (root / CHECKPOINT_DIR / "baseline" / "seed0" / "last.pt").exists(), "".join(seen[-20:])
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (killed,) = client.search_runs([client.get_experiment_by_name("robust-deepfake").experiment_id])
    assert killed.info.status == "RUNNING"  # what a SIGKILL leaves

    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr("robust_deepfake.tracking.store._exported", None)
    result, _ = train_model(params, ModelKey("baseline", 0), root, MlflowTrainingTracker(params, root))
    assert result.resumed_from in (1, 2)
    runs = {run.info.run_id: run for run in client.search_runs(
        [client.get_experiment_by_name("robust-deepfake").experiment_id])}
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    resumed_id = client.get_run(killed.info.run_id).data.tags["resumed_in_run"]
    resumed = runs[resumed_id]
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed_from_run"] == killed.info.run_id
    steps = sorted(m.step for m in client.get_metric_history(resumed_id, "Training/val_auc"))
    assert steps == [1, 2, 3]  # the epochs before the crash too
    assert not (root / CHECKPOINT_DIR / "baseline" / "seed0" / "mlflow_run.json").exists()
