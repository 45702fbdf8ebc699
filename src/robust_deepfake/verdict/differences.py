"""reg - baseline per training seed, from the attack sweep's predictions and from the
CAM stage's IINC values: the rows of eval/verdict.json (seeds.paired_difference)."""

from __future__ import annotations

import math

import numpy as np

from robust_deepfake.bootstrap import bootstrap_counts, metric_replicates, percentile_ci
from robust_deepfake.config import EvalConfig
from robust_deepfake.explain.outputs import IincValues
from robust_deepfake.metrics import classification_metrics
from robust_deepfake.paths import ModelKey
from robust_deepfake.robustness.sweep import SweepPredictions
from robust_deepfake.units import CLEAN
from robust_deepfake.verdict.seeds import SeedDifference, paired_difference


def _weighted_mean_replicates(per_image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bootstrap replicates (B,) of the mean of `per_image` (n,), NaN entries left out."""
    valid = np.isfinite(per_image)
    w = weights[:, valid]
    return (w @ per_image[valid]) / np.maximum(w.sum(axis=1), 1)


def sweep_differences(predictions: SweepPredictions, config: EvalConfig) -> list[SeedDifference]:
    """reg - baseline per seed in accuracy, macro-F1, AUC (clean row first, then each
    attack averaged over eps > 0) and attack success rate on the images both models of
    the seed classify correctly when clean."""
    labels = predictions.labels
    weights = bootstrap_counts(len(labels), max(config.n_bootstrap, 1), config.seed)
    attacked = [e for e, eps in enumerate(predictions.eps) if eps > 0]
    plan = [(CLEAN, 0, [0])] + [(attack, k, attacked) for k, attack in enumerate(predictions.attacks)]
    seeds = [s for s in predictions.seeds
             if ModelKey("baseline", s) in predictions.models and ModelKey("reg", s) in predictions.models]
    out = []
    for attack, k, eps_indices in plan:
        metrics = ("accuracy", "f1", "auc") + (("asr",) if attack != CLEAN else ())
        per_seed = {m: [] for m in metrics}
        per_image = {m: [] for m in metrics}
        seed_reps = {m: [] for m in metrics}
        for seed in seeds:
            ia, ib = predictions.index(ModelKey("baseline", seed)), predictions.index(ModelKey("reg", seed))
            both_correct = ((predictions.p_fake[ia, 0, 0] >= 0.5) == labels) & ((predictions.p_fake[ib, 0, 0] >= 0.5) == labels)
            point = {m: [] for m in metrics}
            reps = {m: [] for m in metrics}
            for e in eps_indices:
                pa, pb = predictions.p_fake[ia, k, e], predictions.p_fake[ib, k, e]
                ma, mb = classification_metrics(labels, pa), classification_metrics(labels, pb)
                ra, rb = metric_replicates(labels, pa, weights), metric_replicates(labels, pb, weights)
                for metric in ("accuracy", "f1", "auc"):
                    point[metric].append(mb[metric] - ma[metric])
                    reps[metric].append(rb[metric] - ra[metric])
                if "asr" in point:
                    flips = (((pb >= 0.5) != labels).astype(float) - ((pa >= 0.5) != labels).astype(float))
                    flips[~both_correct] = np.nan  # ASR counts only images both models got right
                    point["asr"].append(float(np.nanmean(flips)) if both_correct.any() else 0.0)
                    reps["asr"].append(_weighted_mean_replicates(flips, weights))
            for metric in metrics:
                per_seed[metric].append(float(np.mean(point[metric])))
                replicate = np.mean(reps[metric], axis=0)
                seed_reps[metric].append(replicate)
                per_image[metric].append(percentile_ci(replicate, config.ci) if config.n_bootstrap
                                         else (math.nan, math.nan))
        for metric in metrics:
            out.append(paired_difference(seeds, per_seed[metric], per_image[metric], attack, metric, config, seed_reps[metric]))
    return out


def iinc_differences(values: IincValues, config: EvalConfig) -> list[SeedDifference]:
    """reg - baseline in mean IINC per seed (stability, localization), per attack,
    averaged over eps and the CAM subset's images (paired per image within a seed)."""
    seeds = sorted({k.seed for k in values.models
                    if ModelKey("baseline", k.seed) in values.models and ModelKey("reg", k.seed) in values.models})
    weights = bootstrap_counts(len(values.indices), max(config.n_bootstrap, 1), config.seed)
    out = []
    for measure, array in (("stability", values.stability), ("localization", values.localization)):
        for a, attack in enumerate(values.attacks):
            per_seed, per_image, replicates = [], [], []
            for seed in seeds:
                ia, ib = values.index(ModelKey("baseline", seed)), values.index(ModelKey("reg", seed))
                diff = array[ib, a] - array[ia, a]  # (E, n)
                valid = np.isfinite(diff).any(axis=0)
                image_diff = np.full(diff.shape[1], np.nan)
                image_diff[valid] = np.nanmean(diff[:, valid], axis=0)  # average over eps, per image
                per_seed.append(float(np.nanmean(image_diff)) if valid.any() else math.nan)
                replicate = _weighted_mean_replicates(image_diff, weights)
                replicates.append(replicate)
                per_image.append(percentile_ci(replicate, config.ci) if config.n_bootstrap and valid.any()
                                 else (math.nan, math.nan))
            if not per_seed or any(math.isnan(d) for d in per_seed):
                continue
            out.append(paired_difference(seeds, per_seed, per_image, attack, f"iinc_{measure}", config, replicates))
    return out
