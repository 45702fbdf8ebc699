"""The verdict's rows: every pair of COMPARISONS present, per training seed, from the attack
sweep's predictions and from the CAM stage's IINC values (eval/verdict.json).

For each seed both variants of a pair are scored on the same test images; d_s is the
difference and se_s the SD of its image-bootstrap replicates (the same resampled images
for every model, so the replicates are paired). Rows come pair by pair in question order
(seeds.COMPARISONS); within a pair: clean first, then each attack (averaged over eps > 0).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from robust_deepfake.bootstrap import bootstrap_counts, metric_replicates, percentile_ci
from robust_deepfake.config import EvalConfig
from robust_deepfake.explain.outputs import IincValues
from robust_deepfake.metrics import classification_metrics
from robust_deepfake.paths import ModelKey
from robust_deepfake.robustness.sweep import SweepPredictions
from robust_deepfake.units import CLEAN
from robust_deepfake.verdict.claims import MIN_EFFECT
from robust_deepfake.verdict.seeds import Pair, SeedDifference, paired_seeds, present_pairs, seed_difference

SCORES = ("accuracy", "f1", "auc")


def replicate_se(replicates: np.ndarray) -> float:
    """Test-sampling SE of a statistic: the SD of its finite bootstrap replicates (NaN below 2)."""
    finite = np.asarray(replicates, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.std(ddof=1)) if finite.size >= 2 else math.nan


def _weighted_mean_replicates(per_image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bootstrap replicates (B,) of the mean of `per_image` (n,), NaN entries left out."""
    valid = np.isfinite(per_image)
    w = weights[:, valid]
    return (w @ per_image[valid]) / np.maximum(w.sum(axis=1), 1)


class _Seed:
    """What one seed contributes to a row: d_s, its replicates and its per-image interval."""

    def __init__(self) -> None:
        self.diffs: list[float] = []
        self.ses: list[float] = []
        self.per_image: list[tuple[float, float]] = []

    def add(self, diff: float, replicates: np.ndarray, config: EvalConfig) -> None:
        self.diffs.append(diff)
        bootstrapped = config.n_bootstrap >= 2 and math.isfinite(diff)
        self.ses.append(replicate_se(replicates) if bootstrapped else math.nan)
        self.per_image.append(percentile_ci(replicates, config.ci) if bootstrapped else (math.nan, math.nan))


def _evasions(labels: np.ndarray, p_clean: np.ndarray, p_adv: np.ndarray) -> np.ndarray:
    """Per image 1 where a fake detected when clean is scored real under attack, 0 where it
    is still detected, NaN for every other image: its mean is metrics.evasion_rate."""
    detected = (labels == 1) & (p_clean >= 0.5)
    return np.where(detected, (p_adv < 0.5).astype(float), np.nan)


def sweep_differences(predictions: SweepPredictions, config: EvalConfig,
                      min_effect: float = MIN_EFFECT) -> list[SeedDifference]:
    """Per present pair: accuracy, macro-F1 and AUC (clean row first, then each attack
    averaged over eps > 0), attack success rate on the images both models of the seed
    classify correctly when clean, and the evasion rate (each model over the fakes it
    detects when clean: metrics.evasion_rate). An evasion row is left out when a model of
    some seed detects no fake when clean (its rate is undefined)."""
    labels = predictions.labels
    weights = bootstrap_counts(len(labels), max(config.n_bootstrap, 1), config.seed)
    attacked = [e for e, eps in enumerate(predictions.eps) if eps > 0]
    plan = [(CLEAN, 0, [0])] + [(attack, k, attacked) for k, attack in enumerate(predictions.attacks)]

    @cache
    def scored(model: int, k: int, e: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        p = predictions.p_fake[model, k, e]
        return classification_metrics(labels, p), metric_replicates(labels, p, weights)

    def wrong(model: int, k: int, e: int) -> np.ndarray:
        return ((predictions.p_fake[model, k, e] >= 0.5) != labels).astype(float)

    out = []
    for pair in present_pairs(predictions.variants):
        seeds = paired_seeds(predictions.models, pair)
        for attack, k, eps_indices in plan:
            metrics = SCORES + (("asr", "evasion_rate") if attack != CLEAN else ())
            rows = {m: _Seed() for m in metrics}
            for seed in seeds:
                ib, ia = predictions.index(ModelKey(pair.second, seed)), predictions.index(ModelKey(pair.first, seed))
                both_correct = (wrong(ia, 0, 0) == 0) & (wrong(ib, 0, 0) == 0)
                point = {m: [] for m in metrics}
                reps = {m: [] for m in metrics}
                for e in eps_indices:
                    (ma, ra), (mb, rb) = scored(ia, k, e), scored(ib, k, e)
                    for metric in SCORES:
                        point[metric].append(ma[metric] - mb[metric])
                        reps[metric].append(ra[metric] - rb[metric])
                    if "asr" in point:
                        flips = wrong(ia, k, e) - wrong(ib, k, e)
                        flips[~both_correct] = np.nan  # ASR counts only images both models got right
                        point["asr"].append(float(np.nanmean(flips)) if both_correct.any() else 0.0)
                        reps["asr"].append(_weighted_mean_replicates(flips, weights))
                        evaded = [_evasions(labels, predictions.p_fake[i, 0, 0], predictions.p_fake[i, k, e])
                                  for i in (ia, ib)]
                        point["evasion_rate"].append(float(np.nanmean(evaded[0]) - np.nanmean(evaded[1]))
                                                     if all(np.isfinite(v).any() for v in evaded) else math.nan)
                        reps["evasion_rate"].append(_weighted_mean_replicates(evaded[0], weights)
                                                    - _weighted_mean_replicates(evaded[1], weights))
                for metric in metrics:
                    rows[metric].add(float(np.mean(point[metric])), np.mean(reps[metric], axis=0), config)
            out += [_row(pair, attack, metric, seeds, rows[metric], config, min_effect) for metric in metrics
                    if metric != "evasion_rate" or not any(math.isnan(d) for d in rows[metric].diffs)]
    return out


def _row(pair: Pair, attack: str, metric: str, seeds: list[int], found: _Seed, config: EvalConfig,
         min_effect: float) -> SeedDifference:
    return seed_difference(pair, attack, metric, seeds, found.diffs, found.ses, config.ci, min_effect, found.per_image)


def iinc_differences(values: IincValues, config: EvalConfig, min_effect: float = MIN_EFFECT) -> list[SeedDifference]:
    """Per present pair: the difference in mean IINC per seed (stability, localization),
    per attack, averaged over eps and the CAM subset's images (paired per image within a
    seed). A row is left out when a seed has no finite IINC for it."""
    weights = bootstrap_counts(len(values.indices), max(config.n_bootstrap, 1), config.seed)
    out = []
    for pair in present_pairs(k.variant for k in values.models):
        seeds = paired_seeds(values.models, pair)
        for measure, array in (("stability", values.stability), ("localization", values.localization)):
            for a, attack in enumerate(values.attacks):
                found = _Seed()
                for seed in seeds:
                    ia, ib = values.index(ModelKey(pair.first, seed)), values.index(ModelKey(pair.second, seed))
                    diff = array[ia, a] - array[ib, a]  # (E, n)
                    valid = np.isfinite(diff).any(axis=0)
                    image_diff = np.full(diff.shape[1], np.nan)
                    image_diff[valid] = np.nanmean(diff[:, valid], axis=0)  # average over eps, per image
                    mean = float(np.nanmean(image_diff)) if valid.any() else math.nan
                    found.add(mean, _weighted_mean_replicates(image_diff, weights), config)
                if not found.diffs or any(math.isnan(d) for d in found.diffs):
                    continue
                out.append(_row(pair, attack, f"iinc_{measure}", seeds, found, config, min_effect))
    return out
