"""Is the regularized model more robust? Paired comparisons and the champion choice.

The verdict per attack is the difference reg - baseline of a metric averaged over the
attacked eps (eps > 0), with a paired bootstrap interval: every replicate resamples the
same test images (or CAM subset) for both models, so image difficulty cancels out. An
interval that excludes 0 is reported as a difference; otherwise as "no evidence".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robust_deepfake.bootstrap import bootstrap_counts, mean_with_ci, metric_replicates, percentile_ci
from robust_deepfake.config import EvalConfig
from robust_deepfake.evaluation import SweepPredictions, eps_label
from robust_deepfake.metrics import classification_metrics

HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "auc": True, "iinc_stability": False, "iinc_localization": False}


@dataclass(frozen=True)
class Difference:
    attack: str
    metric: str
    diff: float  # reg - baseline, averaged over eps > 0
    ci_low: float
    ci_high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    @property
    def favours(self) -> str:
        """Which model the interval favours, or 'neither'."""
        if not self.excludes_zero:
            return "neither"
        better_if_positive = HIGHER_IS_BETTER[self.metric]
        return "reg" if (self.diff > 0) == better_if_positive else "baseline"

    def as_dict(self) -> dict:
        return {"attack": self.attack, "metric": self.metric, "diff": self.diff, "ci": [self.ci_low, self.ci_high],
                "n": self.n, "excludes_zero": self.excludes_zero, "favours": self.favours}


def sweep_differences(predictions: SweepPredictions, config: EvalConfig, a: str = "baseline", b: str = "reg") -> list[Difference]:
    """reg - baseline in accuracy, macro-F1 and AUC: clean (eps = 0), then per attack
    averaged over eps > 0."""
    ia, ib = predictions.models.index(a), predictions.models.index(b)
    labels = predictions.labels
    weights = bootstrap_counts(len(labels), max(config.n_bootstrap, 1), config.seed)
    out = []
    attacked = [e for e, eps in enumerate(predictions.eps) if eps > 0]
    # the clean row first: a robustness gain that only mirrors a clean-accuracy gain is no gain
    plan = [("clean", 0, [0])] + [(attack, k, attacked) for k, attack in enumerate(predictions.attacks)]
    for attack, k, eps_indices in plan:
        point = {m: [] for m in ("accuracy", "f1", "auc")}
        reps = {m: [] for m in ("accuracy", "f1", "auc")}
        for e in eps_indices:
            pa, pb = predictions.p_fake[ia, k, e], predictions.p_fake[ib, k, e]
            ma, mb = classification_metrics(labels, pa), classification_metrics(labels, pb)
            ra, rb = metric_replicates(labels, pa, weights), metric_replicates(labels, pb, weights)
            for metric in point:
                point[metric].append(mb[metric] - ma[metric])
                reps[metric].append(rb[metric] - ra[metric])
        for metric in point:
            diff = float(np.mean(point[metric])) if point[metric] else math.nan
            low, high = percentile_ci(np.mean(reps[metric], axis=0), config.ci) if config.n_bootstrap and reps[metric] else (math.nan, math.nan)
            out.append(Difference(attack, metric, diff, low, high, len(labels)))
    return out


def iinc_differences(values: dict[str, np.ndarray], attacks: list[str], eps_grid: list[float], config: EvalConfig,
                     a: str = "baseline", b: str = "reg") -> list[Difference]:
    """reg - baseline in mean IINC (stability, localization) per attack, averaged over eps,
    paired over the CAM subset's images."""
    out = []
    for measure in ("stability", "localization"):
        for attack in attacks:
            diffs = []
            for eps in eps_grid:
                key_a, key_b = f"{measure}|{a}|{attack}|{eps_label(eps)}", f"{measure}|{b}|{attack}|{eps_label(eps)}"
                if key_a in values and key_b in values:
                    diffs.append(values[key_b] - values[key_a])
            if not diffs or diffs[0].size == 0:
                continue
            per_image = np.mean(diffs, axis=0)  # (n,) average over eps, paired per image
            point, low, high = mean_with_ci(per_image, config.n_bootstrap, config.ci, config.seed)
            out.append(Difference(attack, f"iinc_{measure}", point, low, high, int(per_image.size)))
    return out


def robustness_score(compact_sweep: dict, model: str, criterion: str) -> tuple[float, float]:
    """(score, tie-breaker) for the champion choice from metrics/attack_sweep.json.

    pgd_accuracy / pgd_auc: mean over eps > 0 of PGD's metric; mean_attack_accuracy: over
    every attack and eps > 0; clean_*: the eps = 0 row. Clean accuracy breaks ties.
    """
    attacks = compact_sweep[model]
    any_attack = next(iter(attacks.values()))
    clean_accuracy = any_attack["0"]["accuracy"]
    if criterion.startswith("clean_"):
        return any_attack["0"][criterion.removeprefix("clean_")], clean_accuracy
    if criterion.startswith("pgd_"):
        if "pgd" not in attacks:
            raise ValueError("report.select_by: pgd_* needs pgd in attack.attacks")
        chosen, metric = ["pgd"], criterion.removeprefix("pgd_")
    elif criterion == "mean_attack_accuracy":
        chosen, metric = list(attacks), "accuracy"
    else:
        raise ValueError(f"report.select_by: unknown criterion {criterion!r}")
    values = [entry[metric] for attack in chosen for label, entry in attacks[attack].items() if label != "0"]
    if not values:
        raise ValueError("report.select_by: the sweep has no eps > 0")
    return float(np.mean(values)), clean_accuracy


def choose_champion(compact_sweep: dict, criterion: str) -> tuple[str, str, dict[str, float]]:
    """(champion, challenger, scores) by `criterion`; ties go to the better clean accuracy,
    then to the baseline (the simpler model)."""
    scored = {model: robustness_score(compact_sweep, model, criterion) for model in compact_sweep}
    order = sorted(scored, key=lambda m: (scored[m][0], scored[m][1], m == "baseline"), reverse=True)
    return order[0], order[1], {m: s[0] for m, s in scored.items()}
