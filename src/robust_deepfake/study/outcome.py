"""What one finished cell measured: the per-variant numbers the study compares, read from
the cell's own stage outputs (eval/attack_sweep.json, eval/attack_predictions.npz,
eval/cam_iinc.json), so a study reports exactly what each experiment's report reports."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from robust_deepfake import units
from robust_deepfake.bootstrap import bootstrap_counts, metric_replicates
from robust_deepfake.config import Params
from robust_deepfake.explain.outputs import CamMetrics
from robust_deepfake.io import finite_number
from robust_deepfake.metrics import classification_metrics
from robust_deepfake.paths import VARIANTS, ModelKey
from robust_deepfake.robustness.sweep import SweepMetrics, SweepPredictions
from robust_deepfake.units import CLEAN
from robust_deepfake.verdict.differences import replicate_se
from robust_deepfake.verdict.seeds import present_pairs

def variant_metrics(params: Params, sweep: SweepMetrics, cam: CamMetrics | None, key: ModelKey) -> dict[str, Any]:
    """Clean accuracy/AUC/F1, accuracy and AUC under each attack at report.reference_eps,
    and IINC stability as the headline defines it (mean over every CAM attack and eps)."""
    ref = params.report.reference_eps
    clean = sweep.get(key, CLEAN, 0.0)
    out: dict[str, Any] = {"acc_clean": clean.accuracy, "auc_clean": clean.auc, "f1_clean": clean.f1}
    for attack in sweep.attacks:
        entry = sweep.get(key, attack, ref)
        out[f"acc_{attack}"], out[f"auc_{attack}"] = entry.accuracy, entry.auc
    stability = [] if cam is None else [
        cam.get(key, attack, eps, "stability").mean for attack in cam.attacks for eps in cam.attacked_eps]
    out["iinc_stab"] = float(np.nanmean(stability)) if stability and np.isfinite(stability).any() else math.nan
    return {name: finite_number(value) for name, value in out.items()}


def heldout_metrics(params: Params, predictions: SweepPredictions, key: ModelKey, method: str) -> dict[str, Any]:
    """The held-out method against every test real: AUC and accuracy, clean and under each
    attack at the reference eps (the generalization claim: fakes never seen in training)."""
    subset = (predictions.labels == 0) | (predictions.sources == method)
    m = predictions.index(key)
    ref = min(range(len(predictions.eps)), key=lambda e: abs(predictions.eps[e] - params.report.reference_eps))
    out: dict[str, Any] = {}
    points = [(CLEAN, 0, 0)] + [(attack, a, ref) for a, attack in enumerate(predictions.attacks)]
    for name, a, e in points:
        scores = classification_metrics(predictions.labels[subset], predictions.p_fake[m, a, e][subset])
        out[f"acc_{name}"], out[f"auc_{name}"] = scores["accuracy"], scores["auc"]
    return {name: finite_number(value) for name, value in out.items()}


def pair_test_se(params: Params, predictions: SweepPredictions, seed: int,
                 subset: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Per pair of the variants this cell trained (verdict.seeds.COMPARISONS): the
    test-sampling SE of its difference in each metric variant_metrics reads from the sweep
    (clean accuracy/AUC/F1, accuracy and AUC under each attack at the reference eps), the
    SD over eval.n_bootstrap paired image resamples; on `subset` (a mask) when given. {}
    with fewer than 2 resamples. The study's floor for the seed-level interval."""
    if params.eval.n_bootstrap < 2:
        return {}
    mask = np.ones(len(predictions.labels), bool) if subset is None else subset
    labels = predictions.labels[mask]
    weights = bootstrap_counts(len(labels), params.eval.n_bootstrap, params.eval.seed)
    ref = min(range(len(predictions.eps)), key=lambda e: abs(predictions.eps[e] - params.report.reference_eps))
    points = [(CLEAN, 0, 0)] + [(attack, a, ref) for a, attack in enumerate(predictions.attacks)]
    models = {k.variant: predictions.index(k) for k in predictions.models if k.seed == seed}
    out: dict[str, dict[str, float]] = {}
    for pair in present_pairs(models):
        found: dict[str, float] = {}
        for name, a, e in points:
            first, second = (metric_replicates(labels, predictions.p_fake[models[v], a, e][mask], weights)
                             for v in (pair.first, pair.second))
            for short, metric in (("acc", "accuracy"), ("auc", "auc"), ("f1", "f1")):
                if short != "f1" or name == CLEAN:
                    found[f"{short}_{name}"] = replicate_se(first[metric] - second[metric])
        out[pair.key] = {name: finite_number(value) for name, value in found.items()}
    return out


def cell_measurements(params: Params, sweep: SweepMetrics, predictions: SweepPredictions,
                      cam: CamMetrics | None) -> dict[str, Any]:
    """The measured part of a cell record (study/cell.py adds who ran it, where, how long)."""
    seed = params.train.seeds[0]
    keys = {variant: ModelKey(variant, seed) for variant in VARIANTS
            if ModelKey(variant, seed) in predictions.models}  # a cell run before the placebo has none
    present = set(predictions.sources.tolist())
    return {
        "ref_eps_255": units.grey_levels(params.report.reference_eps),
        "attacks": list(sweep.attacks),
        "variants": {variant: variant_metrics(params, sweep, cam, key) for variant, key in keys.items()},
        "heldout": {method: {variant: heldout_metrics(params, predictions, key, method)
                             for variant, key in keys.items()}
                    for method in params.split.holdout_methods if method in present},
        "test_se": pair_test_se(params, predictions, seed),
        "heldout_test_se": {method: pair_test_se(params, predictions, seed,
                                                 (predictions.labels == 0) | (predictions.sources == method))
                            for method in params.split.holdout_methods if method in present},
    }
