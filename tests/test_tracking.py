"""MLflow after the micro `dvc repro`: runs, registered versions, aliases, pyfunc by alias."""

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_state(monkeypatch):
    """Undo what a test does to MLflow's process-wide state: the client's tracking and
    registry URIs, the MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI variables that
    mlflow.set_*_uri() export, and store.configure's record of what it exported."""
    import os

    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    from robust_deepfake.tracking import store

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    monkeypatch.setattr(store, "_exported", store._exported)
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


SEED_ALIASES = {f"{variant}-seed{seed}" for variant in ("baseline", "placebo", "reg") for seed in (0, 1)}
MODEL = "robust-deepfake-detector"


def test_one_training_run_per_variant_and_seed_with_params_tags_and_epoch_metrics(client):
    experiment = client.get_experiment_by_name("robust-deepfake")
    runs = client.search_runs([experiment.experiment_id], "tags.stage LIKE 'train_%'")
    models = sorted((run.data.tags["variant"], run.data.tags["seed"]) for run in runs)
    assert models == [(variant, seed) for variant in ("baseline", "placebo", "reg") for seed in ("0", "1")]
    for run in runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["stage"] == f"train_{tags['variant']}"
        assert tags["role"] == ("control" if tags["variant"] == "placebo" else "candidate")
        assert run.info.run_name == f"train_{tags['variant']}-seed{tags['seed']}"
        assert run.data.params["train.epochs"] == "1"
        assert run.data.params["train.seeds"] == "[0, 1]"
        assert tags["git_commit"] != "unknown"
        assert tags["data_md5"].endswith(".dir")
        assert "Training/val_auc" in run.data.metrics and "best/val_auc" in run.data.metrics
        assert "epoch" not in run.data.metrics and "Training/epoch" not in run.data.metrics  # the step is the epoch
        assert tags["reg_mode"] == ("none" if tags["variant"] == "baseline" else "random")
        epochs = client.get_metric_history(run.info.run_id, "Training/val_auc")  # logged live, by the stage's process
        assert [m.step for m in epochs] == [1]
        assert run.data.params["attack.eps"] == '["1/255", "2/255"]'  # budgets as people write them
        # step = eps in grey levels (the prefix says so); the clean row is step 0 of the sweep's curves
        history = client.get_metric_history(run.info.run_id, "attack_vs_eps255/pgd/accuracy")
        assert sorted(m.step for m in history) == [1, 2]
        assert all(0 <= m.value <= 1 for m in history)
        cam = client.get_metric_history(run.info.run_id, "cam_vs_eps255/pgd/iinc_stability")
        assert sorted(m.step for m in cam) == [1, 2]
        assert not any(name.startswith("cam_vs_eps255/clean") or "best_best" in name for name in run.data.metrics)


def test_training_runs_hold_their_artifacts_and_data_input(client, micro_repo):
    """What a reviewer opens in `mlflow ui`: resolved params, per-epoch CSV and curves, the
    validation confusion matrix, the data it read (digest = data.dvc md5)."""
    import json

    import yaml

    experiment = client.get_experiment_by_name("robust-deepfake")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on runs, not GenAI
    md5 = yaml.safe_load((micro_repo / "data.dvc").read_text())["outs"][0]["md5"]
    for run in client.search_runs([experiment.experiment_id], "tags.stage LIKE 'train_%'"):
        names = {a.path for folder in ("", "training", "config") for a in client.list_artifacts(run.info.run_id, folder)}
        assert {"training/curves.png", "training/val_confusion.png", "training/val_confusion.json",
                "config/params.json", "model"} <= names | {"model"}, names
        local = client.download_artifacts(run.info.run_id, "training/val_confusion.json")
        matrix = json.loads(Path(local).read_text())["matrix"]
        assert sum(map(sum, matrix)) == json.loads((micro_repo / "metrics/split.json").read_text())["val"]["total"]
        (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
        assert dataset.digest == md5[:36] and dataset.name == "data/raw"


def test_registered_versions_carry_signature_example_and_model_card(client):
    import mlflow
    import pandas as pd

    model = client.get_registered_model(MODEL)
    assert "dvc_experiment" in model.description and "@champion" in model.description
    for alias in ("baseline-seed0", "reg-seed1"):
        version = client.get_model_version_by_alias(MODEL, alias)
        info = mlflow.models.get_model_info(f"models:/{MODEL}/{version.version}")
        assert [c.name for c in info.signature.inputs.inputs] == ["image"]
        assert info.saved_input_example_info is not None
        example = mlflow.models.Model.load(info.model_uri).load_input_example(
            mlflow.artifacts.download_artifacts(info.model_uri))
        assert isinstance(example, pd.DataFrame) and list(example.columns) == ["image"]
        card = version.description
        assert card.startswith(f"# {MODEL}: {alias}") and "## Validation (best epoch)" in card
        assert "## Test set, clean and under attack (report stage)" in card and "## Quality floor" in card
        assert version.tags["quality_floor"].startswith(("passed", "failed"))


def test_registered_versions_and_aliases(client, micro_repo):
    import hashlib
    import json

    model = client.get_registered_model(MODEL)
    assert {"baseline", "placebo", "reg", "champion", "challenger"} | SEED_ALIASES <= set(model.aliases)
    versions = {alias: client.get_model_version_by_alias(MODEL, alias) for alias in SEED_ALIASES}
    assert len({v.version for v in versions.values()}) == 6  # one version per trained model
    for alias, version in versions.items():
        variant, seed = alias.split("-seed")
        assert (version.tags["variant"], version.tags["seed"]) == (variant, seed)
        assert version.tags["role"] == ("control" if variant == "placebo" else "candidate")
        record = json.loads((micro_repo / ".cache" / "runs" / variant / f"seed{seed}.json").read_text())
        assert record["registered_version"] == str(version.version)
        weights = micro_repo / "models" / variant / f"seed{seed}" / "model.pt"
        assert version.tags["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    decision = json.loads((micro_repo / "eval" / "verdict.json").read_text())["decision"]
    for variant in ("baseline", "placebo", "reg"):  # @<variant>: the variant's representative seed
        by_variant = client.get_model_version_by_alias(MODEL, variant)
        assert by_variant.version == versions[decision["representatives"][variant]].version
        assert by_variant.tags["variant"] == variant
        assert "robustness_pgd_auc_seed_mean" in by_variant.tags
    assert decision["move_champion"] is True  # the first report: there was no champion yet
    champion = client.get_model_version_by_alias(MODEL, "champion")
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert champion.version == versions[decision["champion"]].version
    assert challenger.version == versions[decision["challenger"]].version
    assert {champion.tags["variant"], challenger.tags["variant"]} == {"baseline", "reg"}  # never the placebo
    assert any(key.startswith("robustness_") for key in champion.tags)

    experiment = client.get_experiment_by_name("robust-deepfake")
    (report,) = client.search_runs([experiment.experiment_id], "tags.stage = 'report'")
    assert report.data.tags["champion"] == decision["champion"]
    assert report.data.params["seeds"] == "[0, 1]"
    variants = ("baseline", "placebo", "reg")
    headline = {"seeds"} | {f"{metric}/{variant}" for metric in ("acc_clean", "acc_pgd") for variant in variants}
    headline |= {f"pgd_acc_diff/{pair}/{part}" for pair in ("reg_placebo", "placebo_baseline", "reg_baseline")
                 for part in ("mean", "lo", "hi", "claim")}
    headline |= {"masking_warn"}
    scores = {f"score_{variant}" for variant in variants}
    # seeds_needed when there is a spread to plan with; an evasion rate when the models detect a fake clean
    optional = {"seeds_needed"} | {f"evasion_pgd/{variant}" for variant in variants}
    assert scores | headline <= set(report.data.metrics) <= scores | headline | optional
    assert report.data.tags["git_commit"] == version_commit(micro_repo)  # a committed run: no "-dirty"


def version_commit(root):
    import subprocess

    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("alias", ["baseline", "champion", "reg-seed1"])
def test_pyfunc_by_alias_scores_any_batch_size(client, micro_repo, alias):
    import mlflow

    from robust_deepfake.data.images import load_rgb_array

    import base64

    import pandas as pd

    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL}@{alias}")
    model = loaded.unwrap_python_model()  # numpy arrays in-process; the signature describes the REST form
    files = sorted((micro_repo / "data" / "raw" / "fake").rglob("*.png"))[:5]
    batch = np.stack([load_rgb_array(f, 32) for f in files]).astype(np.float32) / 255
    for n in (3, 1, 5):
        scores = model.predict(None, batch[:n].transpose(0, 3, 1, 2))
        assert scores.shape == (n,)
        assert np.all((scores >= 0) & (scores <= 1))
    nhwc = model.predict(None, batch[:3])  # channel-last input is accepted too
    np.testing.assert_allclose(nhwc, model.predict(None, batch[:3].transpose(0, 3, 1, 2)), rtol=1e-6)
    # the signature's form, through MLflow's schema enforcement: base64 image files
    frame = pd.DataFrame({"image": [base64.b64encode(f.read_bytes()).decode() for f in files[:3]]})
    np.testing.assert_allclose(loaded.predict(frame), nhwc, rtol=1e-5, atol=1e-6)


def test_configure_follows_each_repository_and_respects_the_user(tmp_path, mlflow_state):
    from robust_deepfake.config import TrackingConfig
    from robust_deepfake.tracking import store

    monkeypatch = mlflow_state
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    assert store.configure(TrackingConfig(), a) == f"sqlite:///{a / 'mlflow.db'}"
    assert store.configure(TrackingConfig(), b) == f"sqlite:///{b / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
    assert store.configure(TrackingConfig(), a) == "sqlite:////elsewhere/mlflow.db"
    assert store.configure(TrackingConfig(), b) == "sqlite:////elsewhere/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert store.configure(TrackingConfig(), b) == f"sqlite:///{b / 'mlflow.db'}"
    assert store.configure(TrackingConfig(tracking_uri="sqlite:////x.db"), a) == "sqlite:////x.db"
