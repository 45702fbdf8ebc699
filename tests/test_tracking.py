"""MLflow after the micro `dvc repro`: runs, registered versions, aliases, pyfunc by alias."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def client(micro_repo, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{micro_repo / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{micro_repo / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{micro_repo / 'mlflow.db'}")
    return MlflowClient()


def test_two_training_runs_with_params_tags_and_epoch_metrics(client):
    experiment = client.get_experiment_by_name("robust-deepfake")
    runs = client.search_runs([experiment.experiment_id], "tags.stage LIKE 'train_%'")
    variants = sorted(run.data.tags["variant"] for run in runs)
    assert variants == ["baseline", "reg"]
    for run in runs:
        assert run.data.params["train.epochs"] == "1"
        assert run.data.tags["git_commit"] != "unknown"
        assert run.data.tags["data_md5"].endswith(".dir")
        assert "val_auc" in run.data.metrics and "best_val_auc" in run.data.metrics
        assert run.data.tags["reg_mode"] == ("random" if run.data.tags["variant"] == "reg" else "none")
        history = client.get_metric_history(run.info.run_id, "attack/pgd/accuracy")
        assert sorted(m.step for m in history) == [0, 100, 200]  # eps in hundredths of a grey level


def test_registered_versions_and_aliases(client):
    model = client.get_registered_model("robust-deepfake-detector")
    assert {"baseline", "reg", "champion", "challenger"} <= set(model.aliases)
    baseline = client.get_model_version_by_alias("robust-deepfake-detector", "baseline")
    assert baseline.tags["variant"] == "baseline"
    champion = client.get_model_version_by_alias("robust-deepfake-detector", "champion")
    assert any(key.startswith("robustness_") for key in champion.tags)


@pytest.mark.parametrize("alias", ["baseline", "champion"])
def test_pyfunc_by_alias_scores_any_batch_size(client, micro_repo, alias):
    import mlflow

    from robust_deepfake.data.images import load_rgb_array

    model = mlflow.pyfunc.load_model(f"models:/robust-deepfake-detector@{alias}")
    files = sorted((micro_repo / "data" / "raw" / "fake").rglob("*.png"))[:5]
    batch = np.stack([load_rgb_array(f, 32) for f in files]).astype(np.float32) / 255
    for n in (3, 1, 5):
        scores = model.predict(batch[:n].transpose(0, 3, 1, 2))
        assert scores.shape == (n,)
        assert np.all((scores >= 0) & (scores <= 1))
    nhwc = model.predict(batch[:3])  # channel-last input is accepted too
    np.testing.assert_allclose(nhwc, model.predict(batch[:3].transpose(0, 3, 1, 2)), rtol=1e-6)


def test_configure_follows_each_repository_and_respects_the_user(tmp_path, monkeypatch):
    from robust_deepfake import tracking
    from robust_deepfake.config import TrackingConfig

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    assert tracking.configure(TrackingConfig(), a) == f"sqlite:///{a / 'mlflow.db'}"
    assert tracking.configure(TrackingConfig(), b) == f"sqlite:///{b / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
    assert tracking.configure(TrackingConfig(), a) == "sqlite:////elsewhere/mlflow.db"
    assert tracking.configure(TrackingConfig(), b) == "sqlite:////elsewhere/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.configure(TrackingConfig(), b) == f"sqlite:///{b / 'mlflow.db'}"
    assert tracking.configure(TrackingConfig(tracking_uri="sqlite:////x.db"), a) == "sqlite:////x.db"
