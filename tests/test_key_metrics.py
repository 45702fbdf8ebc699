"""key_metrics, the figures the pipeline flow returns: read from the report, else from the
stage outputs a partial run wrote (the robustness score is the champion's, pinned in
test_verdict.py)."""

from __future__ import annotations

import pytest
import yaml

from helpers import REPO
from robust_deepfake.io import write_json
from robust_deepfake.orchestration.dvc_runner import StageGraph
from robust_deepfake.paths import VARIANTS, ModelKey, ReportOutputs, SweepOutputs, TrainOutputs, model_keys
from robust_deepfake.pipeline.key_metrics import key_metrics
from robust_deepfake.robustness.sweep import SweepEntry, SweepMetrics


def _model_index(key: ModelKey) -> int:
    """0, 1: baseline seeds 0, 1; 2, 3: reg's; 4, 5: the placebo's (the numbers below were
    set for baseline and reg alone)."""
    return ("baseline", "reg", "placebo").index(key.variant) * 2 + key.seed


def _sweep_metrics():
    """A hand-made SweepMetrics: two seeds per variant, pgd and fgsm at 1/255 and 2/255."""
    entries = []
    for key in model_keys([0, 1]):
        m = _model_index(key)
        entries.append(SweepEntry(key, "clean", 0.0, 0.9 - 0.01 * m, 0.9, 0.95, 0.0, 10))
        for a, attack in enumerate(("pgd", "fgsm")):
            for e, eps in enumerate((1 / 255, 2 / 255)):
                accuracy = 0.7 - 0.1 * e - 0.05 * a + 0.02 * m
                entries.append(SweepEntry(key, attack, eps, accuracy, accuracy, accuracy + 0.1, 0.2, 10))
    return SweepMetrics(entries, 0.95, True)


def test_key_metrics_reads_the_report_else_the_stage_outputs(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["seeds"] = [0, 1]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert key_metrics(root) == {}  # nothing run yet
    for key in model_keys([0, 1]):
        write_json(TrainOutputs.of(root, key).metrics, {"val_auc": 0.8 + 0.1 * key.seed + 0.01 * _model_index(key)})
    write_json(TrainOutputs.of(root, ModelKey("reg", 7)).metrics, {"val_auc": 0.0})  # not in train.seeds
    _sweep_metrics().save(SweepOutputs.at(root).metrics)

    found = key_metrics(root)
    assert found["baseline/val_auc"] == pytest.approx(0.85 + 0.005)
    assert found["reg/val_auc"] == pytest.approx(0.85 + 0.025)
    assert found["robustness_by"] == "pgd auc"  # report.select_by
    assert found["baseline/robustness"] == pytest.approx(0.75 + 0.01)  # pgd AUC at 1/255 and 2/255, seed mean
    assert found["reg/clean_accuracy"] == pytest.approx(0.875)
    assert "champion" not in found and "reg/acc_pgd" not in found

    report = ReportOutputs.at(root)
    headline = {"seeds": 2, "ref_eps_255": 1.0, "acc_clean": {"baseline": 0.6, "reg": 0.6},
                "auc_clean": {"baseline": 0.7, "reg": 0.7}, "acc_pgd": {"baseline": 0.4, "reg": 0.4},
                "auc_pgd": {"baseline": 0.3, "reg": 0.3}, "iinc_stab": {"baseline": float("nan"), "reg": float("nan")},
                "pgd_acc_diff": {"mean": 0.0, "lo": -0.1, "hi": 0.1}}
    write_json(report.metrics, headline)
    write_json(report.verdict, {"differences": [], "decision": {"champion": "reg-seed1", "challenger": "baseline-seed0"}})
    found = key_metrics(root)
    assert (found["reg/acc_pgd"], found["baseline/auc_clean"], found["champion"]) == (0.4, 0.7, "reg-seed1")
    assert found["reg/val_auc"] == pytest.approx(0.875)  # not in the headline: from the train metrics
    assert "reg/iinc_stab" not in found and "reg/iinc_stability" not in found  # NaN, and no cam_iinc.json

    # a run up to attack_sweep: the report's files are from an earlier run
    covered = {f"train_{variant}": frozenset(TrainOutputs.of(root, k).metrics.relative_to(root).as_posix()
                                             for k in model_keys([0, 1]) if k.variant == variant)
               for variant in VARIANTS}
    covered["attack_sweep"] = frozenset({"eval/attack_sweep.json"})
    partial = key_metrics(root, StageGraph(tuple(covered), {s: frozenset() for s in covered}, covered))
    assert "champion" not in partial and "reg/acc_pgd" not in partial
    assert partial["reg/val_auc"] == pytest.approx(0.875)
