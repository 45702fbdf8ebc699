"""What `mlflow ui` opens on: the experiment carries its description and the saved runs
view (plain JSON in `mlflow.sharedViewState.runs`, the form MLflow's UI reads), and
`robust-deepfake mlflow-url` prints the address that opens the model-training runs table
with that view. Per-epoch metrics are `Training/<name>` at step = epoch from 1."""

import json
from pathlib import Path

import pytest

from robust_deepfake.cli import main
from robust_deepfake.tracking import store
from robust_deepfake.tracking.runs import epoch_metrics


@pytest.fixture
def sqlite_store(empty_mlflow_db: Path, tmp_path: Path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{empty_mlflow_db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(store, "_exported", None)
    mlflow.set_tracking_uri(uri)
    return uri


def test_a_new_experiment_carries_its_description_and_runs_view(sqlite_store, tmp_path):
    import mlflow

    experiment_id = store.ensure_experiment("robust-deepfake", tmp_path)
    tags = mlflow.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert "`train_<variant>-seed<k>`" in tags["mlflow.note.content"]
    view = json.loads(tags["mlflow.sharedViewState.runs"])
    assert "metrics.`best/val_auc`" in view["selectedColumns"] and "tags.`variant`" in view["selectedColumns"]
    url = store.landing_url("http://127.0.0.1:5000/", experiment_id)
    assert url == (f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
                   "?workflowType=machine_learning&viewStateShareKey=runs")


def test_an_old_experiment_gets_the_landing_tags_but_a_user_description_stays(sqlite_store, tmp_path):
    import mlflow

    client = mlflow.MlflowClient()
    old = client.create_experiment("old")
    store.ensure_experiment("old", tmp_path)
    assert client.get_experiment(old).tags["mlflow.sharedViewState.runs"] == json.dumps(store.run_view(),
                                                                                           separators=(",", ":"))
    mine = client.create_experiment("mine", tags={"mlflow.note.content": "my own notes"})
    store.ensure_experiment("mine", tmp_path)
    assert client.get_experiment(mine).tags["mlflow.note.content"] == "my own notes"


def test_mlflow_url_prints_the_landing_address(sqlite_store, tmp_path, capsys, monkeypatch):
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["mlflow-url", "--params", str(tmp_path / "params.yaml")])
    assert exit_.value.code == 2 and "no experiment 'robust-deepfake'" in capsys.readouterr().err
    experiment_id = store.ensure_experiment("robust-deepfake", tmp_path)
    main(["mlflow-url", "--server", "http://localhost:5001", "--params", str(tmp_path / "params.yaml")])
    assert capsys.readouterr().out.strip() == store.landing_url("http://localhost:5001", experiment_id)


def test_epoch_metrics_are_grouped_and_counted_from_one():
    metrics, step = epoch_metrics({"epoch": 0, "train_loss": 0.7, "val_auc": 0.61, "val_f1": float("nan")})
    assert step == 1 and metrics == {"Training/train_loss": 0.7, "Training/val_auc": 0.61}


def test_descriptions_render_their_angle_brackets_and_readable_tables():
    """MLflow renders descriptions as Markdown with HTML: `<variant>` outside code would be
    an (invisible) tag; the card's test table is monospace, one row per line."""
    from markdown_it import MarkdownIt

    from robust_deepfake.paths import ModelKey
    from robust_deepfake.tracking.model_card import REGISTERED_MODEL_DESCRIPTION, report_section

    rendered = MarkdownIt("commonmark").render(REGISTERED_MODEL_DESCRIPTION)
    assert "<code>@&lt;variant&gt;-seed&lt;k&gt;</code>" in rendered and "<variant>" not in rendered
    rows = [dict(attack="clean", eps=0.0, accuracy=0.9, auc=0.95), dict(attack="pgd", eps=2 / 255, accuracy=0.5,
                                                                         auc=0.625)]
    card = MarkdownIt("commonmark").render(report_section(ModelKey("reg", 0), rows, ["a"], "passed: ok", "d"))
    assert "clean   0      0.900     0.950\npgd     2/255  0.500     0.625" in card
