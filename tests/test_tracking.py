"""MLflow after the micro `dvc repro`: runs, registered versions, aliases, pyfunc by alias."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_state(monkeypatch):
    """Undo what a test does to MLflow's process-wide state: the client's tracking and
    registry URIs, the MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI variables that
    mlflow.set_*_uri() export, and tracking.configure's record of what it exported."""
    import os

    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    from robust_deepfake.ops import tracking

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    monkeypatch.setattr(tracking, "_exported", tracking._exported)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # records the value to restore (or its absence)
        if not os.environ[name]:
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def client(micro_repo, mlflow_state):
    import mlflow
    from mlflow import MlflowClient

    mlflow_state.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{micro_repo / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{micro_repo / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{micro_repo / 'mlflow.db'}")
    return MlflowClient()


SEED_ALIASES = {"baseline-seed0", "baseline-seed1", "reg-seed0", "reg-seed1"}
MODEL = "robust-deepfake-detector"


def test_one_training_run_per_variant_and_seed_with_params_tags_and_epoch_metrics(client):
    experiment = client.get_experiment_by_name("robust-deepfake")
    runs = client.search_runs([experiment.experiment_id], "tags.stage LIKE 'train_%'")
    models = sorted((run.data.tags["variant"], run.data.tags["seed"]) for run in runs)
    assert models == [("baseline", "0"), ("baseline", "1"), ("reg", "0"), ("reg", "1")]
    for run in runs:
        tags = run.data.tags
        assert tags["stage"] == f"train_{tags['variant']}@{tags['seed']}"
        assert run.info.run_name == f"train_{tags['variant']}-seed{tags['seed']}"
        assert run.data.params["train.epochs"] == "1"
        assert run.data.params["train.seeds"] == "[0, 1]"
        assert tags["git_commit"] != "unknown"
        assert tags["data_md5"].endswith(".dir")
        assert "val_auc" in run.data.metrics and "best_val_auc" in run.data.metrics
        assert tags["reg_mode"] == ("random" if tags["variant"] == "reg" else "none")
        # eps in hundredths of a grey level; the clean row (eps 0) is not part of an attack's curve
        history = client.get_metric_history(run.info.run_id, "attack/pgd/accuracy")
        assert sorted(m.step for m in history) == [100, 200]
        assert all(0 <= m.value <= 1 for m in history)
        cam = client.get_metric_history(run.info.run_id, "cam/pgd/iinc_stability")
        assert sorted(m.step for m in cam) == [100, 200]


def test_registered_versions_and_aliases(client, micro_repo):
    import hashlib
    import json

    model = client.get_registered_model(MODEL)
    assert {"baseline", "reg", "champion", "challenger"} | SEED_ALIASES <= set(model.aliases)
    versions = {alias: client.get_model_version_by_alias(MODEL, alias) for alias in SEED_ALIASES}
    assert len({v.version for v in versions.values()}) == 4  # one version per trained model
    for alias, version in versions.items():
        variant, seed = alias.split("-seed")
        assert (version.tags["variant"], version.tags["seed"]) == (variant, seed)
        record = json.loads((micro_repo / ".cache" / "runs" / variant / f"seed{seed}.json").read_text())
        assert record["registered_version"] == str(version.version)
        weights = micro_repo / "models" / variant / f"seed{seed}" / "model.pt"
        assert version.tags["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    decision = json.loads((micro_repo / "eval" / "verdict.json").read_text())["decision"]
    for variant in ("baseline", "reg"):  # @<variant>: the variant's representative seed
        by_variant = client.get_model_version_by_alias(MODEL, variant)
        assert by_variant.version == versions[decision["representatives"][variant]].version
        assert by_variant.tags["variant"] == variant
        assert "robustness_pgd_accuracy_seed_mean" in by_variant.tags
    assert decision["move_champion"] is True  # the first report: there was no champion yet
    champion = client.get_model_version_by_alias(MODEL, "champion")
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert champion.version == versions[decision["champion"]].version
    assert challenger.version == versions[decision["challenger"]].version
    assert champion.tags["variant"] != challenger.tags["variant"]
    assert any(key.startswith("robustness_") for key in champion.tags)

    experiment = client.get_experiment_by_name("robust-deepfake")
    (report,) = client.search_runs([experiment.experiment_id], "tags.stage = 'report'")
    assert report.data.tags["champion"] == decision["champion"]
    assert report.data.params["seeds"] == "[0, 1]"
    assert set(report.data.metrics) == {"score_baseline", "score_reg"}


@pytest.mark.parametrize("alias", ["baseline", "champion", "reg-seed1"])
def test_pyfunc_by_alias_scores_any_batch_size(client, micro_repo, alias):
    import mlflow

    from robust_deepfake.data.images import load_rgb_array

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@{alias}")
    files = sorted((micro_repo / "data" / "raw" / "fake").rglob("*.png"))[:5]
    batch = np.stack([load_rgb_array(f, 32) for f in files]).astype(np.float32) / 255
    for n in (3, 1, 5):
        scores = model.predict(batch[:n].transpose(0, 3, 1, 2))
        assert scores.shape == (n,)
        assert np.all((scores >= 0) & (scores <= 1))
    nhwc = model.predict(batch[:3])  # channel-last input is accepted too
    np.testing.assert_allclose(nhwc, model.predict(batch[:3].transpose(0, 3, 1, 2)), rtol=1e-6)


def test_configure_follows_each_repository_and_respects_the_user(tmp_path, mlflow_state):
    from robust_deepfake.config import TrackingConfig
    from robust_deepfake.ops import tracking

    monkeypatch = mlflow_state
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
