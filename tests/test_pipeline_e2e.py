"""The real DAG with the real dvc CLI, on the micro profile."""

import json
import sys

import pytest

from micro_repo import run

pytestmark = pytest.mark.slow


def test_repro_produces_every_declared_output(micro_repo):
    for path in [
        "data/splits/train.csv", "models/baseline/model.pt", "models/reg/meta.json",
        "metrics/split.json", "metrics/train_baseline.json", "metrics/train_reg.json",
        "metrics/attack_sweep.json", "plots/attack_sweep.csv", "eval/attack_predictions.npz",
        "metrics/cam_iinc.json", "plots/iinc.csv", "reports/cam/cam_reg_pgd.png",
    ]:
        assert (micro_repo / path).exists(), path


def test_second_repro_is_a_no_op_and_status_is_clean(micro_repo):
    result = run([sys.executable, "-m", "dvc", "repro"], micro_repo)
    assert "Running stage" not in result.stdout, result.stdout
    status = run([sys.executable, "-m", "dvc", "status"], micro_repo)
    assert "up to date" in status.stdout, status.stdout


def test_metrics_show_lists_clean_and_attacked_accuracy(micro_repo):
    shown = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], micro_repo).stdout
    data = json.loads(shown)
    metrics = next(iter(data.values()))["data"]["metrics/attack_sweep.json"]["data"]
    for model in ("baseline", "reg"):
        assert 0 <= metrics[model]["pgd"]["0"]["accuracy"] <= 1
        assert 0 <= metrics[model]["pgd"]["2/255"]["accuracy"] <= 1


def test_changing_split_seed_invalidates_split_only(micro_repo, tmp_path):
    """Only `split` reads split.seed; downstream stages re-run only because its outs change."""
    import shutil

    import yaml

    copy = tmp_path / "repo"
    shutil.copytree(micro_repo, copy, symlinks=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["split"]["seed"] = 5
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run([sys.executable, "-m", "dvc", "status", "--json"], copy).stdout
    changed = json.loads(status)
    assert list(changed) == ["split"], changed
