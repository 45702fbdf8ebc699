"""The real DAG with the real dvc CLI, on the micro profile (two seeds per variant)."""

import json
import sys

import numpy as np
import pytest

from helpers import run

pytestmark = pytest.mark.slow

VARIANTS = ("baseline", "placebo", "reg")
TRAIN_STAGES = [f"train_{variant}" for variant in VARIANTS]


def test_repro_produces_every_declared_output(micro_repo):
    for path in [
        "data/splits/train.csv", "metrics/split.json",
        *(f"models/{variant}/seed{seed}/{name}" for variant in VARIANTS for seed in (0, 1)
          for name in ("model.pt", "meta.json")),
        *(f"{kind}/train_{variant}/seed{seed}.{ext}" for variant in VARIANTS for seed in (0, 1)
          for kind, ext in (("metrics", "json"), ("plots", "csv"))),
        "eval/attack_sweep.json", "eval/attack_predictions.npz", "plots/attack_sweep.csv",
        "eval/cam_iinc.json", "eval/cam_iinc_values.npz", "plots/iinc.csv", "reports/cam/cam_reg_pgd.png",
        "reports/report.md", "reports/report.html", "reports/figures/robustness_accuracy.png",
        "eval/verdict.json", "metrics/report.json", "metrics/machine.json", "plots/robustness/pgd.csv",
    ]:
        assert (micro_repo / path).exists(), path
    for variant in VARIANTS:
        for seed in (0, 1):
            meta = json.loads((micro_repo / "models" / variant / f"seed{seed}" / "meta.json").read_text())
            assert (meta["variant"], meta["seed"]) == (variant, seed)
    placebo = json.loads((micro_repo / "models" / "placebo" / "seed0" / "meta.json").read_text())["reg"]
    reg = json.loads((micro_repo / "models" / "reg" / "seed0" / "meta.json").read_text())["reg"]
    assert placebo == {**reg, "epsilon": 0.0, "epsilon_scale": "absolute"}
    # every variant went through the sweep and the CAMs
    sweep = json.loads((micro_repo / "eval" / "attack_sweep.json").read_text())
    assert {entry["variant"] for entry in sweep["entries"]} == set(VARIANTS)


def test_second_repro_is_a_no_op_and_status_is_clean(micro_repo):
    result = run([sys.executable, "-m", "dvc", "repro"], micro_repo)
    assert "Running stage" not in result.stdout, result.stdout
    status = run([sys.executable, "-m", "dvc", "status"], micro_repo)
    assert "up to date" in status.stdout, status.stdout


def test_one_train_stage_per_variant(micro_repo):
    listed = run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], micro_repo).stdout.split()
    assert [name for name in listed if name.startswith("train_")] == TRAIN_STAGES
    dry = run([sys.executable, "-m", "dvc", "repro", "--dry", "--force", "--single-item", "train_placebo"], micro_repo)
    assert "'train_placebo'" in dry.stdout, dry.stdout
    assert "'train_reg'" not in dry.stdout and "'train_baseline'" not in dry.stdout, dry.stdout


@pytest.mark.parametrize(("change", "stale"), [
    # the perturbation: reg only, never the placebo (the report prints the reg recipe)
    ({"reg": {"epsilon": 0.25}}, ["report", "train_reg"]),
    ({"reg": {"epsilon_scale": "absolute"}}, ["report", "train_reg"]),
    ({"reg": {"alpha": 0.25}}, ["report", "train_placebo", "train_reg"]),
    ({"train": {"workers": 1}}, []),  # the pool size changes no bytes, so no stage but the check
], ids=["epsilon", "epsilon_scale", "alpha", "workers"])
def test_a_params_change_makes_stale_only_the_stages_that_read_it(micro_repo, tmp_path, change, stale):
    import shutil

    import yaml

    copy = tmp_path / "repo"
    shutil.copytree(micro_repo, copy, symlinks=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    for section, values in change.items():
        params[section].update(values)
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], copy).stdout)
    # check_params depends on params.yaml as a file: it re-validates every edit
    assert sorted(changed) == ["check_params", *stale], changed


def _numeric_leaves(node) -> list[float]:
    if isinstance(node, dict):
        return [v for child in node.values() for v in _numeric_leaves(child)]
    if isinstance(node, list):
        return [v for child in node for v in _numeric_leaves(child)]
    return [node] if isinstance(node, int | float) and not isinstance(node, bool) else []


def test_metrics_show_is_the_headline_only(micro_repo):
    """`dvc metrics show` lists one file of at most 24 numbers; the per-seed and per-eps tables are
    outs (still on disk, and in `dvc plots`)."""
    shown = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], micro_repo).stdout
    data = next(iter(json.loads(shown).values()))["data"]
    assert set(data) == {"metrics/report.json"}
    report = data["metrics/report.json"]["data"]
    assert report["seeds"] == 2
    for variant in ("baseline", "reg"):
        assert 0 <= report["acc_clean"][variant] <= 1
        assert 0 <= report["acc_pgd"][variant] <= 1
    for variant in ("baseline", "reg"):
        for seed in (0, 1):
            assert 0 <= json.loads((micro_repo / f"metrics/train_{variant}/seed{seed}.json").read_text())["val_auc"] <= 1
    assert len(_numeric_leaves(report)) <= 24  # a headline (pipeline/report.headline_metrics), not a dump of the sweep
    table = run([sys.executable, "-m", "dvc", "metrics", "show"], micro_repo).stdout.splitlines()
    assert len(table) <= 30, table


def _check_seed_interval(row: dict) -> None:
    """A row's interval and claim are claims.assess over its per-seed differences and
    their test SEs: never narrower than the Student-t interval of the d_s."""
    from scipy import stats

    from robust_deepfake.verdict.claims import assess

    per_seed = np.array(row["diffs"])
    assert row["mean"] == pytest.approx(per_seed.mean())
    same = assess(row["diffs"], row["ses"], row["level"], row["min_effect"])
    assert [row["low"], row["high"], row["claim"]] == pytest.approx([same.low, same.high, same.claim])
    low, high = row["low"], row["high"]
    assert low <= row["mean"] <= high
    if np.ptp(per_seed) > 0:
        t_low, t_high = stats.t.interval(row["level"], per_seed.size - 1, loc=per_seed.mean(),
                                         scale=stats.sem(per_seed))
        assert low <= t_low + 1e-12 and high >= t_high - 1e-12, row
    assert (row["favours"] == "neither") is (row["claim"] == 0)


def test_verdict_intervals_are_over_seeds(micro_repo):
    """eval/verdict.json: the PGD accuracy row is the mean of the two per-seed differences
    of the sweep, with an interval at least as wide as the Student-t interval over those
    seeds; so is every other row."""
    verdict = json.loads((micro_repo / "eval" / "verdict.json").read_text())
    row = next(d for d in verdict["differences"]
               if (d["comparison"], d["attack"], d["metric"]) == ("reg_baseline", "pgd", "accuracy"))
    assert row["seeds"] == [0, 1] and len(row["diffs"]) == 2 and len(row["per_image_ci"]) == 2
    _check_seed_interval(row)
    sweep = json.loads((micro_repo / "eval" / "attack_sweep.json").read_text())["entries"]

    def pgd_accuracy(variant, seed):
        return np.mean([e["accuracy"] for e in sweep
                        if (e["variant"], e["seed"], e["attack"]) == (variant, seed, "pgd") and e["eps"] > 0])

    np.testing.assert_allclose(row["diffs"], [pgd_accuracy("reg", s) - pgd_accuracy("baseline", s) for s in (0, 1)])
    report = json.loads((micro_repo / "metrics" / "report.json").read_text())
    headline = report["pgd_acc_diff"]["reg_baseline"]
    assert [headline["mean"], headline["lo"], headline["hi"], headline["claim"]] == pytest.approx(
        [row["mean"], row["low"], row["high"], row["claim"]])

    spread = 0
    for other in verdict["differences"]:
        assert other["seeds"] == [0, 1]
        _check_seed_interval(other)
        spread += np.ptp(other["diffs"]) > 0
    assert spread > 0  # at least one row exercises a non-degenerate interval
    assert verdict["decision"]["evidence"]["seeds"] == [0, 1]


def test_changing_split_seed_invalidates_split_only(micro_repo, tmp_path):
    """Only `split` reads split.seed (check_params re-runs for any edit of params.yaml, and
    its out stays the same); downstream stages re-run only because the split's outs change."""
    import shutil

    import yaml

    copy = tmp_path / "repo"
    shutil.copytree(micro_repo, copy, symlinks=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["split"]["seed"] = 5
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run([sys.executable, "-m", "dvc", "status", "--json"], copy).stdout
    changed = json.loads(status)
    assert sorted(changed) == ["check_params", "split"], changed
